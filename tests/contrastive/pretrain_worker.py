"""Run ``workbench pretrain``'s job in a subprocess, optionally SIGKILLing itself at a step (kill-and-resume tests).

Usage: python tests/contrastive/pretrain_worker.py CONFIG.yaml RUN_DIR [--kill-at K] [--resume]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.helpers.kill_resume import sigkill_at
from workbench.config import load_settings
from workbench.host import create_plugin_manager
from workbench.report import RunFolder
from workbench_plugins.contrastive.jobs.pretrain import run_pretrain
from workbench_plugins.contrastive.settings import PretrainSettings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    settings = load_settings(PretrainSettings, args.config)
    host = create_plugin_manager()
    if args.resume:
        run_pretrain(settings, host.datasets.builders, resume=args.run_dir, after_optimizer_step=sigkill_at(args.kill_at), progress=False)
    else:
        args.run_dir.mkdir(parents=True, exist_ok=True)
        run = RunFolder(args.run_dir)
        run.save_settings(settings)
        run_pretrain(settings, host.datasets.builders, run=run, after_optimizer_step=sigkill_at(args.kill_at), progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
