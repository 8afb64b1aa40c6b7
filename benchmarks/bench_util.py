"""What the benchmark scripts share: running one ``workbench`` job in its own process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_workbench(arguments: list[str]) -> tuple[Path, float]:
    """Run ``workbench ARGS`` from the repository root in a fresh process (no state leaks between runs).

    Returns:
        ``(index.html path the job printed last, wall seconds)``.

    Raises:
        RuntimeError: the job failed (with the end of its stderr).
    """
    executable = Path(sys.executable).with_name("workbench")
    started = time.perf_counter()
    completed = subprocess.run([str(executable), *arguments], cwd=REPO_ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"workbench {' '.join(arguments)} failed:\n{completed.stderr[-4000:]}")
    return Path(completed.stdout.strip().splitlines()[-1]), elapsed
