"""``workbench runs clean`` and ``workbench models gc``: what they remove, what they keep, and ``--dry-run``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from workbench.cli import build_cli
from workbench.errors import ConfigError
from workbench.host import create_plugin_manager
from workbench.housekeeping import find_run_folders, parse_age, removable_versions
from workbench.model_store import ModelStore
from workbench.registry import ModelRegistry

DAY = 86400.0


@pytest.fixture(scope="module")
def cli():
    host = create_plugin_manager()
    return build_cli(host), host


def invoke(cli, arguments: list[str]):
    command, host = cli
    return CliRunner().invoke(command, arguments, obj=host)


def make_run(root: Path, relative: str, age_days: float, payload: int = 1000, marker: str = "config.yaml") -> Path:
    """A run folder with a marker file and ``payload`` bytes in a checkpoint, every entry ``age_days`` old."""
    run = root / relative
    (run / "checkpoints").mkdir(parents=True)
    (run / marker).write_text("x: 1\n")
    (run / "checkpoints" / "model.safetensors").write_bytes(b"\0" * payload)
    stamp = time.time() - age_days * DAY
    for item in [run, *run.rglob("*")]:
        os.utime(item, (stamp, stamp))
    return run


def test_parse_age_reads_units_and_refuses_other_spellings():
    assert parse_age("7d") == 7 * DAY and parse_age("12h") == 43200 and parse_age("2w") == 14 * DAY and parse_age("1.5m") == 90
    with pytest.raises(ConfigError, match="'7 days'"):
        parse_age("7 days")


def test_runs_clean_removes_only_old_run_folders_and_dry_run_only_lists(cli, tmp_path: Path):
    root = tmp_path / "runs"
    old = make_run(root, "pretrain-20260101-000000", age_days=30, payload=5000)
    old_bench = make_run(root, "bench-tiny/pretrain", age_days=10, payload=3000, marker="metrics.json")
    recent = make_run(root, "demo-20261206-000000", age_days=1)
    touched = make_run(root, "pretrain-20260102-000000", age_days=30)
    (touched / "checkpoints" / "latest").write_text("resumed today\n")  # a run resumed today is not old
    (root / "not-a-run").mkdir()
    assert [run.path for run in find_run_folders(root)] == sorted([old_bench, recent, old, touched])

    listed = invoke(cli, ["runs", "clean", "--older-than", "7d", "--root", str(root), "--dry-run"])
    assert listed.exit_code == 0, listed.output
    assert f"would remove {old} " in listed.output and f"would remove {old_bench} " in listed.output
    assert str(recent) not in listed.output and str(touched) not in listed.output
    expected_bytes = 5000 + 3000 + 2 * len("x: 1\n")
    assert f"2 run folder(s), 7.8 KiB ({expected_bytes} bytes) would be freed" in listed.output
    assert old.exists() and old_bench.exists()

    removed = invoke(cli, ["runs", "clean", "--older-than", "7d", "--root", str(root)])
    assert removed.exit_code == 0, removed.output
    assert f"({expected_bytes} bytes) freed" in removed.output
    assert not old.exists() and not old_bench.exists()
    assert recent.exists() and touched.exists() and (root / "not-a-run").exists()


def test_runs_clean_refuses_a_bad_age(cli, tmp_path: Path):
    result = invoke(cli, ["runs", "clean", "--older-than", "soon", "--root", str(tmp_path)])
    assert result.exit_code != 0 and "age 'soon' is not valid" in str(result.exception)


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelStore:
    """A store (the default one, through WORKBENCH_HOME) of a tiny linear model.

    a: v1 <- v2 (parent v1) <- v3 (best, parent v2), v4 (latest), v5 (latest after); b: v1 (parent a:v4), v2 (latest).
    """
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    registry = ModelRegistry()
    registry.register("linear", lambda: torch.nn.Linear(64, 64), task="test")
    store = ModelStore(registry=registry)
    model = torch.nn.Linear(64, 64)

    def save(name: str, parent: str | None = None, aliases: tuple[str, ...] = ()) -> None:
        store.save(model, name=name, factory="linear", task="test", config={}, preprocessing={"image_size": 8}, parent=parent, aliases=aliases)

    save("a")
    save("a", parent="a:v1")
    save("a", parent="a:v2", aliases=("best",))
    save("a")
    save("a")
    save("b", parent="a:v4")
    save("b")
    return store


def test_models_gc_keeps_aliases_latest_and_their_parents(store: ModelStore):
    # a:v4 is only the parent of b:v1, which goes too; a:v1 and a:v2 stay as parents of a:v3 (best).
    assert [record.ref for record in removable_versions(store)] == ["a:v4", "b:v1"]
    store.set_alias("b", "production", 1)
    assert removable_versions(store) == []  # b:v1 now kept, and with it its parent a:v4


def version_bytes(store: ModelStore, name: str, version: int) -> int:
    return sum(item.stat().st_size for item in store.version_dir(name, version).rglob("*") if item.is_file())


def test_models_gc_command_dry_run_then_removal(cli, store: ModelStore):
    freed = version_bytes(store, "a", 4) + version_bytes(store, "b", 1)
    listed = invoke(cli, ["models", "gc", "--dry-run"])
    assert listed.exit_code == 0, listed.output
    assert "would remove a:v4" in listed.output and "would remove b:v1" in listed.output
    assert "2 version(s)" in listed.output and f"({freed} bytes) would be freed" in listed.output
    assert [record.version for record in store.list("a")] == [1, 2, 3, 4, 5]

    removed = invoke(cli, ["models", "gc"])
    assert removed.exit_code == 0, removed.output
    assert "removed a:v4" in removed.output and "removed b:v1" in removed.output and f"({freed} bytes) freed" in removed.output
    assert [record.ref for record in store.list()] == ["a:v1", "a:v2", "a:v3", "a:v5", "b:v2"]
    assert not store.version_dir("a", 4).exists() and not store.version_dir("b", 1).exists()
    assert store.resolve("a", "best").version == 3
