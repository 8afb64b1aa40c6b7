"""A writer SIGKILLed inside ``ModelStore.save``: never half a version, the next save works, verify/fix clean up."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.helpers.disk_faults import MESSAGES, disk_full
from tests.helpers.kill_resume import REPO_ROOT, run_worker
from tests.helpers.store_worker import make_registry, mlp, save_seeded
from workbench.cli import models_group
from workbench.fsutil import DiskFullError
from workbench.model_store import ModelStore

WORKER = REPO_ROOT / "tests" / "helpers" / "store_worker.py"

# kill point -> (versions listed after the kill, kinds `check` reports once the leftovers are old, next version number)
CASES = {
    "weights-written": ([1], {"leftover"}, 2),
    "record-written": ([1], {"leftover"}, 2),
    "folder-renamed": ([1], {"orphan", "leftover"}, 3),
    "index-committed": ([1, 2], {"record", "leftover"}, 3),
}


def _age_leftovers(root: Path) -> None:
    """Make the staging leftovers older than the grace that protects a live writer's."""
    past = time.time() - 600
    for item in (root / ".staging").iterdir():
        os.utime(item, (past, past))


def _assert_loads_as_seeded(store: ModelStore, version: int) -> None:
    state, record = store.load_state_dict("shared", version)
    torch.manual_seed(record.extra["seed"])
    expected = mlp().state_dict()
    assert all(torch.equal(state[key], value) for key, value in expected.items()), record.ref


@pytest.mark.parametrize("point", sorted(CASES))
def test_a_writer_killed_mid_save_leaves_old_versions_or_the_new_one_whole(tmp_path: Path, point: str) -> None:
    listed, kinds, next_version = CASES[point]
    root = tmp_path / "store"
    store = ModelStore(root, make_registry())
    save_seeded(store, 1)

    killed = run_worker(WORKER, [root, point, 2], timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    assert [record.version for record in store.list("shared")] == listed
    for version in listed:
        _assert_loads_as_seeded(store, version)
    assert store.resolve("shared", "latest").version == listed[-1]
    # The next save takes the store lock the dead writer held, and never reuses a folder's number.
    assert save_seeded(store, 3).version == next_version
    _assert_loads_as_seeded(store, next_version)

    _age_leftovers(root)
    issues = store.check()
    assert {issue.kind for issue in issues} == kinds, [issue.message for issue in issues]
    assert [issue.message for issue in store.check()] == [issue.message for issue in issues]  # checking changes nothing
    assert store.fix() == issues
    assert store.check() == []
    assert not any((root / ".staging").iterdir())
    survivors = [record.version for record in store.list("shared")]
    assert survivors == [*listed, next_version]
    for version in survivors:
        _assert_loads_as_seeded(store, version)
    assert save_seeded(store, 4).version == next_version + 1


def test_models_verify_lists_damage_and_orphans_and_fix_removes_them(tmp_path: Path) -> None:
    root = tmp_path / "home" / "models"
    store = ModelStore(root, make_registry())
    for seed in (1, 2, 3):
        save_seeded(store, seed)
    damaged = store.weights_path("shared", 2)
    damaged.write_bytes(damaged.read_bytes()[:-40])  # a truncated copy
    store.weights_path("shared", 3).unlink()
    orphan = store.version_dir("shared", 7)
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"half")
    environment = {"WORKBENCH_HOME": str(tmp_path / "home")}

    dry = CliRunner().invoke(models_group, ["verify"], env=environment)
    assert dry.exit_code == 1, dry.output
    assert f"damaged: {damaged}: sha256 differs from the record" in dry.output
    assert f"missing: {store.weights_path('shared', 3)}: missing" in dry.output
    assert f"orphan: {orphan}: folder not in the index" in dry.output
    assert "3 problem(s); `workbench models verify --fix` repairs them" in dry.output
    assert orphan.exists() and damaged.exists()  # a dry run by default

    fixed = CliRunner().invoke(models_group, ["verify", "--fix"], env=environment)
    assert fixed.exit_code == 0, fixed.output
    assert "3 problem(s) fixed, 0 remaining" in fixed.output
    assert [record.version for record in store.list("shared")] == [1]
    assert store.resolve("shared", "latest").version == 1
    _assert_loads_as_seeded(store, 1)
    assert save_seeded(store, 5).version == 8  # 7 was an orphan's number: never given again
    assert CliRunner().invoke(models_group, ["verify"], env=environment).exit_code == 0


@pytest.mark.parametrize("kind", ["enospc", "efbig"])
def test_a_full_disk_during_save_keeps_the_store_and_removes_the_staging(tmp_path: Path, kind: str) -> None:
    store = ModelStore(tmp_path / "store", make_registry())
    save_seeded(store, 1)
    with disk_full(kind, file_limit=300), pytest.raises(DiskFullError, match=MESSAGES[kind].replace("KiB", "(KiB|B)")) as stopped:
        save_seeded(store, 2)  # about 400 bytes of safetensors: EFBIG comes from the Rust writer
    assert "\n" not in str(stopped.value) and "model.safetensors: " in str(stopped.value)
    assert [record.version for record in store.list("shared")] == [1]
    _assert_loads_as_seeded(store, 1)
    assert not any((tmp_path / "store" / ".staging").iterdir())
    assert store.check() == []
    assert save_seeded(store, 2).version == 2
