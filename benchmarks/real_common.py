"""What the real-data benchmarks (``benchmarks/real_*.py``) share: where the data is, provenance, timing, the JSON.

Each real-data benchmark chooses its settings on ``val`` and scores ``test`` once; its JSON says so
(``selected_on`` / ``scored_on``) next to the config it ran (repo path + sha256), the git commit, the split
sizes and the wall and CPU seconds. No machine path goes into a result: data folders are named as the
configs name them (``../shared/data/...``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
WORK_DIR = REPO_ROOT / "runs" / "benchmarks"


def shared_data_root() -> Path:
    """The shared real-data folder: ``$WORKBENCH_SHARED_DATA``, else ``../shared/data`` next to the repository."""
    configured = os.environ.get("WORKBENCH_SHARED_DATA")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"


def config_record(relative_path: str) -> dict[str, str]:
    """``{"path": repo path, "sha256": hex}`` of a config file, so a result names exactly what it ran."""
    payload = (REPO_ROOT / relative_path).read_bytes()
    return {"path": relative_path, "sha256": hashlib.sha256(payload).hexdigest()}


def uncommitted_changes() -> list[str]:
    """Repository paths with uncommitted changes under ``benchmarks/``, ``configs/``, ``workbench/``, ``plugins/``.

    A result whose code was not yet committed says so, next to the commit it was run on.
    """
    completed = subprocess.run(["git", "status", "--porcelain", "--", "benchmarks", "configs", "workbench", "plugins"],
                               cwd=REPO_ROOT, capture_output=True, text=True)
    return [line[3:] for line in completed.stdout.splitlines() if line[3:] and not line[3:].startswith("benchmarks/results/")]


def git_commit() -> str:
    """``git rev-parse HEAD`` of the repository (``"unknown"`` outside a git checkout)."""
    completed = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    return completed.stdout.strip() if completed.returncode == 0 else "unknown"


class Clock:
    """Wall and CPU seconds of this process (CPU summed over its threads) since it was made."""

    def __init__(self) -> None:
        self.wall_started = time.perf_counter()
        self.cpu_started = time.process_time()

    def seconds(self) -> dict[str, float]:
        """``{"wall_seconds": ..., "cpu_seconds": ...}`` so far."""
        return {"wall_seconds": round(time.perf_counter() - self.wall_started, 1),
                "cpu_seconds": round(time.process_time() - self.cpu_started, 1)}


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread (the machine is shared); restores the old count afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_result(out_path: Path, result: dict[str, Any]) -> Path:
    """Write ``result`` as indented JSON (through a temporary file, so a crash leaves no half file)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_path.with_suffix(out_path.suffix + ".tmp")
    temporary.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    temporary.replace(out_path)
    return out_path


def provenance(configs: list[str], tiny: bool) -> dict[str, Any]:
    """The fields every real-data result starts with: commit, configs with hashes, mode, the split protocol."""
    return {"git_commit": git_commit(), "uncommitted_changes": uncommitted_changes(), "configs": [config_record(path) for path in configs], "tiny": tiny,
            "selected_on": "val", "scored_on": "test", "test_scored_once": True}


def main_for(name: str, run: Callable[[Path, bool], dict[str, Any]], description: str) -> Callable[[list[str] | None], int]:
    """A ``main(argv)`` with ``--tiny`` and ``--out`` that calls ``run(out, tiny)`` and prints the summary.

    Args:
        name: the benchmark's name (``real_pretrain``); the full run's default output is ``benchmarks/results/<name>.json``.
        run: the benchmark's ``run(out_path, tiny)``.
        description: the command's help text.

    Returns:
        ``main(argv) -> exit status``.
    """

    def main(argv: list[str] | None = None) -> int:
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--tiny", action="store_true", help="a few steps on a handful of records (for tests)")
        parser.add_argument("--out", type=Path, default=None,
                            help=f"where the JSON goes (default benchmarks/results/{name}.json; with --tiny a temporary folder)")
        arguments = parser.parse_args(argv)
        out = arguments.out
        if out is None:  # a tiny run never overwrites the committed result
            out = Path(tempfile.mkdtemp(prefix=f"{name}-tiny-")) / f"{name}.json" if arguments.tiny else RESULTS_DIR / f"{name}.json"
        result = run(out, arguments.tiny)
        json.dump(result.get("summary", {}), sys.stdout, indent=2)
        print(f"\nwritten: {out}")
        return 0

    return main
