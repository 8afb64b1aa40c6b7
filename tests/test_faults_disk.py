"""A full disk (ENOSPC) or a file-size limit (EFBIG) while writing: nothing older is lost, nothing partial stays.

The faults come from :mod:`tests.helpers.disk_faults` (ENOSPC at fsync, the kernel's EFBIG from RLIMIT_FSIZE).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

import workbench.train
from tests.helpers.disk_faults import MESSAGES, disk_full
from tests.helpers.fault_training import train
from tests.helpers.kill_resume import assert_same_tensors
from workbench.checkpoints import latest_checkpoint, load_checkpoint, resumable_checkpoint
from workbench.fsutil import DiskFullError
from workbench.report import RunFolder


@pytest.mark.parametrize("kind", ["enospc", "efbig"])
def test_a_full_disk_at_the_second_checkpoint_keeps_the_first_and_resume_ends_at_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    straight, _ = train(tmp_path / "straight")
    real_save, calls = workbench.train.save_checkpoint, []

    def second_checkpoint_fails(*args, **kwargs):
        calls.append(args[0])
        if len(calls) != 2:
            return real_save(*args, **kwargs)
        with disk_full(kind):
            return real_save(*args, **kwargs)

    monkeypatch.setattr(workbench.train, "save_checkpoint", second_checkpoint_fails)
    checkpoints = tmp_path / "run" / "checkpoints"
    with pytest.raises(DiskFullError, match=MESSAGES[kind]) as stopped:
        train(tmp_path / "run")
    message = str(stopped.value)
    assert "\n" not in message and message.startswith(f"{checkpoints / 'step-00000006'}: ")
    assert "run the same command again" in message
    assert sorted(path.name for path in checkpoints.iterdir()) == ["latest", "step-00000003"]  # no partial folder
    assert load_checkpoint(latest_checkpoint(checkpoints)).step == 3

    monkeypatch.undo()
    resumed, result = train(tmp_path / "run")
    assert result.resumed_from == 3 and result.step == 9
    assert_same_tensors(straight.state_dict(), resumed.state_dict())


@pytest.mark.parametrize("kind", ["enospc", "efbig"])
def test_a_results_json_that_does_not_fit_leaves_the_previous_one(tmp_path: Path, kind: str) -> None:
    run = RunFolder(tmp_path / "run")
    run.write_metrics({"dice": 0.81})
    with disk_full(kind), pytest.raises(DiskFullError, match=MESSAGES[kind].replace("KiB", "(KiB|B)")) as stopped:
        run.write_metrics({"per_case": [0.5] * 400})  # about 2.4 KiB of JSON
    assert str(stopped.value).startswith(f"{run.path / 'metrics.json'}: ")
    assert json.loads((run.path / "metrics.json").read_text()) == {"dice": 0.81}
    assert sorted(path.name for path in run.path.iterdir()) == ["metrics.json"]


def test_the_message_says_how_much_to_free(tmp_path: Path) -> None:
    free = DiskFullError(tmp_path / "big.bin", 0, errno.ENOSPC).free_bytes
    error = DiskFullError(tmp_path / "big.bin", free + 5 * 2**30, errno.ENOSPC)
    assert "free at least 5.0 GiB" in str(error)
    assert error.free_bytes == free


def test_resume_after_a_full_disk_at_the_pointer_uses_the_complete_new_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The step folder was renamed into place whole; only the `latest` pointer failed to be written.
    import workbench.checkpoints as checkpoints_module

    real_write, failed = checkpoints_module.atomic_write_text, []

    def pointer_fails(path, text):
        if not failed and "00000006" in text:
            failed.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, text)

    monkeypatch.setattr(checkpoints_module, "atomic_write_text", pointer_fails)
    with pytest.raises(DiskFullError):
        train(tmp_path / "run")
    checkpoint, damaged = resumable_checkpoint(tmp_path / "run" / "checkpoints")
    assert checkpoint.step == 6 and damaged == []
    assert torch.equal(checkpoint.state["optimizer"]["state"][0]["step"], torch.tensor(6.0))
