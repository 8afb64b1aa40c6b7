"""A process that saves one model version and SIGKILLs itself at a chosen point inside ``ModelStore.save``.

Usage: ``python tests/helpers/store_worker.py STORE_ROOT POINT SEED`` where POINT is

- ``weights-written``: the weights are in the private staging folder (store lock not yet taken);
- ``record-written``: holding the store lock, ``record.json`` is written next to the staged weights;
- ``folder-renamed``: the version folder is in place, its index row not yet committed;
- ``index-committed``: the index row is committed, the other versions' ``record.json`` not yet refreshed;
- ``none``: save normally and exit 0.

The kill points are set by wrapping the functions ``workbench.model_store`` calls
at those moments, so the store's code runs unmodified up to the kill.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import workbench.model_store as model_store
from workbench.model_index import ModelIndex
from workbench.registry import ModelRegistry

POINTS = ("weights-written", "record-written", "folder-renamed", "index-committed", "none")


def mlp(width: int = 8) -> nn.Module:
    """The stored test model: ``(B, 4) -> (B, 2)``."""
    return nn.Sequential(nn.Linear(4, width), nn.Linear(width, 2))


def make_registry() -> ModelRegistry:
    """A registry with the ``mlp`` factory."""
    registry = ModelRegistry()
    registry.register("mlp", mlp, task="test", plugin="tests")
    return registry


def save_seeded(store: model_store.ModelStore, seed: int) -> Any:
    """Save ``mlp`` initialised from ``seed`` as a new version of ``shared``."""
    torch.manual_seed(seed)
    return store.save(mlp(), name="shared", factory="mlp", task="test", config={"width": 8},
                      preprocessing={"image_size": 4}, aliases=("best",), extra={"seed": seed})


def _kill_after(function: Callable[..., Any], when: Callable[..., bool] = lambda *a, **k: True) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        if when(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    return wrapped


def arm(point: str) -> None:
    """Patch the store so this process dies at ``point``."""
    if point == "weights-written":
        model_store.write_weights = _kill_after(model_store.write_weights)
    elif point == "record-written":
        model_store.atomic_write_json = _kill_after(model_store.atomic_write_json, lambda path, payload: ".staging" in str(path))
    elif point == "folder-renamed":
        model_store.fsync_dir = _kill_after(model_store.fsync_dir)
    elif point == "index-committed":
        ModelIndex.add = _kill_after(ModelIndex.add)


def main(argv: list[str]) -> int:
    root, point, seed = Path(argv[0]), argv[1], int(argv[2])
    if point not in POINTS:
        raise SystemExit(f"unknown kill point {point!r}; one of {POINTS}")
    torch.set_num_threads(1)
    store = model_store.ModelStore(root, make_registry(), lock_timeout_s=20)
    arm(point)
    save_seeded(store, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
