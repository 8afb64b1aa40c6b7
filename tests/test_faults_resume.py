"""A damaged newest checkpoint: resume names it and continues from the newest intact one, or stops when none is."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import pytest

from tests.helpers.fault_training import Stop, stop_at, train
from tests.helpers.kill_resume import assert_same_tensors
from workbench.checkpoints import latest_checkpoint, resumable_checkpoint
from workbench.errors import IntegrityError


def _truncate_weights(folder: Path) -> str:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return f"{weights}: sha256 does not match checksums.json (the file was altered or truncated)"


def _wrong_checksum(folder: Path) -> str:
    checksums = json.loads((folder / "checksums.json").read_text())
    checksums["state.pt"] = "0" * 64
    (folder / "checksums.json").write_text(json.dumps(checksums))
    return f"{folder / 'state.pt'}: sha256 does not match checksums.json (the file was altered or truncated)"


def _missing_state(folder: Path) -> str:
    (folder / "state.pt").unlink()
    return f"{folder / 'state.pt'}: missing from the checkpoint"


def _missing_checksums(folder: Path) -> str:
    (folder / "checksums.json").unlink()
    return f"{folder}: not a complete checkpoint (no checksums.json)"


DAMAGE: dict[str, Callable[[Path], str]] = {
    "truncated-weights": _truncate_weights, "wrong-checksum": _wrong_checksum,
    "missing-state": _missing_state, "missing-checksums": _missing_checksums,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_skips_a_damaged_latest_checkpoint_and_ends_at_the_same_weights(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    straight, _ = train(tmp_path / "straight")
    with pytest.raises(Stop):
        train(tmp_path / "run", hook=stop_at(8))
    checkpoints = tmp_path / "run" / "checkpoints"
    assert latest_checkpoint(checkpoints).name == "step-00000006"
    problem = DAMAGE[damage](checkpoints / "step-00000006")

    with caplog.at_level(logging.WARNING, logger="workbench"):
        resumed, result = train(tmp_path / "run")
    assert result.resumed_from == 3 and result.step == 9
    assert result.damaged_checkpoints == [problem]
    assert f"checkpoint step-00000006 is damaged and will not be resumed from: {problem}" in caplog.text
    assert_same_tensors(straight.state_dict(), resumed.state_dict())
    # The damaged folder was replaced by the resumed run's own step 6.
    assert resumable_checkpoint(checkpoints)[1] == [] and latest_checkpoint(checkpoints).name == "step-00000009"


def test_damaged_newer_checkpoints_and_partial_folders_are_cleared_when_the_resumed_run_writes(tmp_path: Path) -> None:
    with pytest.raises(Stop):
        train(tmp_path / "run", checkpoint_every=2, hook=stop_at(7))  # checkpoints 2, 4, 6
    checkpoints = tmp_path / "run" / "checkpoints"
    _truncate_weights(checkpoints / "step-00000006")
    _missing_state(checkpoints / "step-00000004")
    (checkpoints / ".step-00000008.partial").mkdir()  # what a SIGKILL during a checkpoint write leaves
    (checkpoints / ".step-00000008.partial" / "model.safetensors").write_bytes(b"half")
    with pytest.raises(Stop):
        train(tmp_path / "run", checkpoint_every=3, hook=stop_at(4))  # resumes at 2, writes 3
    assert sorted(path.name for path in checkpoints.iterdir()) == ["latest", "step-00000002", "step-00000003"]


def test_resume_stops_naming_every_checkpoint_when_none_is_intact(tmp_path: Path) -> None:
    with pytest.raises(Stop):
        train(tmp_path / "run", hook=stop_at(8))
    checkpoints = tmp_path / "run" / "checkpoints"
    first, second = _missing_state(checkpoints / "step-00000003"), _truncate_weights(checkpoints / "step-00000006")
    with pytest.raises(IntegrityError, match="no intact checkpoint to resume from") as stopped:
        train(tmp_path / "run")
    message = str(stopped.value)
    assert message.index(second) < message.index(first)  # newest first
    assert "move the checkpoints folder away to start the run over" in message and "\n" not in message
