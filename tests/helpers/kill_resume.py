"""Kill-and-resume helpers: a training process that SIGKILLs itself at step k, then the same command again.

Any job whose Python entry accepts an ``after_optimizer_step(step)`` callback can
be tested with these: the worker script passes :func:`sigkill_at`, the test runs
it with :func:`run_worker` twice and compares the saved weights with an
uninterrupted run using :func:`assert_same_tensors`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def sigkill_at(kill_step: int | None) -> Callable[[int], None]:
    """An ``after_optimizer_step`` callback that SIGKILLs this process after step ``kill_step`` (never when ``None``)."""

    def maybe_kill(step: int) -> None:
        if kill_step is not None and step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)

    return maybe_kill


def run_worker(script: str | Path, args: Sequence[str], timeout: float = 240, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python script args...`` from the repository root with one thread; returns the finished process."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), **(env or {}))
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=REPO_ROOT, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def assert_same_tensors(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor]) -> None:
    """Assert two state dicts hold the same names and bit-identical tensors (naming the first that differs)."""
    assert sorted(first) == sorted(second)
    for name in first:
        assert torch.equal(first[name], second[name]), f"{name} differs: max |diff| {(first[name].float() - second[name].float()).abs().max().item():.3g}"
