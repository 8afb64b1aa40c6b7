"""A disk cache left half-built by a killed job (or a full disk) is detected and rebuilt, never trusted."""

from __future__ import annotations

import errno
import logging
import os
import signal
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import PersistentDataset
from monai.data.utils import json_hashing
from monai.transforms import Compose, ScaleIntensityd
from PIL import Image

from tests.helpers.kill_resume import run_worker
from workbench.data.disk_cache import CheckedPersistentDataset
from workbench.data.loaders import build_dataset
from workbench.data.readers import LoadWorkbenchImaged
from workbench.fsutil import DiskFullError

KILLED_CACHE_BUILDER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import workbench.data.disk_cache as disk_cache
    from tests.test_faults_cache import make_records, pipeline
    from workbench.data.loaders import build_dataset

    records_dir, cache_dir, kill_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    real_save, saved = disk_cache.torch_save_file, []

    def save_then_die(payload, path):
        if len(saved) == kill_at:  # half of this file reaches the disk, then the job dies
            real_save(payload, path)
            Path(path).write_bytes(Path(path).read_bytes()[: Path(path).stat().st_size // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        saved.append(path)
        return real_save(payload, path)

    disk_cache.torch_save_file = save_then_die
    dataset = build_dataset(make_records(records_dir), pipeline(), cache="disk", cache_dir=cache_dir)
    for index in range(len(dataset)):
        dataset[index]
    """
)


def make_records(folder: Path, count: int = 5) -> list[dict]:
    """``count`` small PNGs, each with its own pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        pixels = np.full((12, 16), 20 * index, dtype=np.uint8)
        pixels[index, :] = 255
        path = folder / f"c{index}.png"
        Image.fromarray(pixels).save(path)
        records.append({"id": f"c{index}", "image": str(path)})
    return records


def pipeline() -> Compose:
    return Compose([LoadWorkbenchImaged("image"), ScaleIntensityd("image")])


def _images(dataset) -> list[torch.Tensor]:
    return [torch.as_tensor(dataset[index]["image"]).clone() for index in range(len(dataset))]


def _age(paths) -> None:
    past = time.time() - 600
    for path in paths:
        os.utime(path, (past, past))


@pytest.mark.slow  # a subprocess that imports MONAI: 10 to 30 s on the shared 2-core machine
def test_a_cache_killed_mid_write_is_finished_on_the_next_run(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    killed = run_worker("-c", [KILLED_CACHE_BUILDER, tmp_path / "records", cache, 2], timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    finished, unfinished = sorted(cache.glob("*.pt")), sorted(cache.glob(".*.tmp"))
    assert len(finished) == 2 and len(unfinished) == 1  # the half file never got a cache name
    _age(unfinished)

    dataset = build_dataset(make_records(tmp_path / "records"), pipeline(), cache="disk", cache_dir=cache)
    assert not unfinished[0].exists()
    images = _images(dataset)
    uncached = _images(build_dataset(make_records(tmp_path / "records"), pipeline()))
    assert all(torch.equal(cached, fresh) for cached, fresh in zip(images, uncached))
    assert len(list(cache.glob("*.pt"))) == 5 and not list(cache.glob(".*.tmp"))


def test_a_truncated_or_garbled_cache_file_is_rebuilt_where_monai_would_stop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    records, cache = make_records(tmp_path / "records"), tmp_path / "cache"
    expected = _images(build_dataset(records, pipeline(), cache="disk", cache_dir=cache))
    files = sorted(cache.glob("*.pt"))
    truncated, garbled = files[0], files[1]
    truncated.write_bytes(truncated.read_bytes()[:300])  # what a copy stopped half-way leaves
    garbled.write_bytes(b"PK\x03\x04" + os.urandom(200))

    # MONAI's own PersistentDataset trusts the file name and stops on the truncated archive.
    plain = PersistentDataset(records, pipeline(), cache_dir=cache, hash_transform=json_hashing)
    with pytest.raises(RuntimeError):
        _images(plain)

    with caplog.at_level(logging.WARNING, logger="workbench.data"):
        dataset = build_dataset(records, pipeline(), cache="disk", cache_dir=cache)
        images = _images(dataset)
    assert all(torch.equal(got, want) for got, want in zip(images, expected))
    assert sorted(dataset.dataset.rebuilt) == sorted([truncated, garbled])
    assert f"cache file {truncated} is damaged" in caplog.text
    assert all(torch.load(path, weights_only=True) is not None for path in (truncated, garbled))  # rewritten whole
    assert _images(build_dataset(records, pipeline(), cache="disk", cache_dir=cache)) and not list(cache.glob(".*.tmp"))


def test_a_full_disk_while_caching_stops_with_the_path_and_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records, cache = make_records(tmp_path / "records"), tmp_path / "cache"
    dataset = CheckedPersistentDataset(records, pipeline(), cache_dir=cache, hash_transform=json_hashing)
    dataset[0]

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DiskFullError, match=rf"{cache}/\w+\.pt: no space left on device \(ENOSPC\)"):
        dataset[1]
    monkeypatch.undo()
    assert len(list(cache.glob("*.pt"))) == 1 and not list(cache.glob(".*.tmp"))
