"""Run ``workbench cae train``'s job in a subprocess, optionally SIGKILLing itself at a step (kill-and-resume test).

Usage: python tests/counterfactual/cae_worker.py CONFIG.yaml OUT.safetensors [--kill-at K] [--resume RUN_DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safetensors.torch import save_file

from tests.helpers.kill_resume import sigkill_at
from workbench.config import load_settings
from workbench.host import create_plugin_manager
from workbench_plugins.counterfactual.jobs.cae_train import run_cae_train
from workbench_plugins.counterfactual.settings import CaeTrainSettings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--resume", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = load_settings(CaeTrainSettings, args.config)
    host = create_plugin_manager()
    outcome = run_cae_train(settings, host.datasets.builders, resume=args.resume, after_optimizer_step=sigkill_at(args.kill_at), progress=False)
    save_file({name: value.contiguous() for name, value in outcome.model.state_dict().items()}, str(args.out))
    print(outcome.run.path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
