"""Loaders: bad records are skipped and listed in skipped.csv in every cache mode; ranks are disjoint."""

from __future__ import annotations

import csv
import logging
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import Dataset
from monai.transforms import Compose, Lambdad, RandFlipd
from PIL import Image

from workbench.data.loaders import (
    SafeDataset,
    SkippedRecords,
    ValidateImaged,
    build_dataset,
    build_loader,
    check_record,
    collate_skipping_none,
)
from workbench.data.readers import LoadWorkbenchImaged
from workbench.errors import ConfigError, ImageReadError

BAD_REASONS = {
    "r3": "image file not found",
    "r5": "empty report",
    "r7": "cannot read png file",
    "r8": "1 NaN/Inf pixel value(s)",
}


def make_records(folder: Path) -> list[dict]:
    """Ten studies: six good, then r3 missing file, r5 empty report, r7 corrupt PNG, r8 NaN pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(10):
        image = folder / f"r{index}.png"
        pixels = np.full((24, 32), 10 * index, dtype=np.uint8)
        pixels[0, :index + 1] = 255  # a per-record mark, so samples can be told apart
        Image.fromarray(pixels).save(image)
        records.append({"id": f"r{index}", "image": str(image), "report": f"Study {index}: no acute finding.",
                        "boxes": [{"phrase": "mark", "x": 0, "y": 0, "w": index + 1, "h": 1}] * (index % 3)})
    (folder / "r3.png").unlink()
    records[5]["report"] = " ___ \n ___"
    (folder / "r7.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    nan_pixels = np.ones((24, 32), dtype=np.float32)
    nan_pixels[3, 4] = np.nan
    nib.save(nib.Nifti1Image(nan_pixels, np.eye(4)), folder / "r8.nii.gz")
    records[8]["image"] = str(folder / "r8.nii.gz")
    return records


def pipeline(with_random: bool = False) -> Compose:
    steps = [LoadWorkbenchImaged("image"), ValidateImaged("image", expected_channels=1, min_size=8)]
    if with_random:
        steps.append(RandFlipd("image", prob=0.5, spatial_axis=1))
    return Compose(steps)


def read_skipped_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("cache, workers", [("none", 0), ("none", 2), ("memory", 0), ("disk", 0)])
def test_bad_records_are_skipped_and_listed(tmp_path, cache, workers, caplog):
    records = make_records(tmp_path / "data")
    skipped = SkippedRecords(tmp_path / "run" / "skipped.csv")
    with caplog.at_level(logging.WARNING, logger="workbench.data"):
        dataset = build_dataset(records, pipeline(with_random=True), cache=cache, cache_dir=tmp_path / "cache",
                                skipped=skipped, require=("image", "report"))
        loader = build_loader(dataset, batch_size=4, shuffle=True, seed=3, num_workers=workers)
        for epoch in range(2):
            loader.set_epoch(epoch)
            seen = []
            for batch in loader:
                if batch is None:
                    continue
                assert batch["image"].shape[1:] == (1, 24, 32) and batch["image"].dtype == torch.float32
                assert len(batch["image_meta"]) == len(batch["id"]) == batch["image"].shape[0]
                seen.extend(batch["id"])
            assert sorted(seen) == ["r0", "r1", "r2", "r4", "r6", "r9"]
    rows = read_skipped_csv(tmp_path / "run" / "skipped.csv")
    assert len(rows) == 4 and len(skipped) == 4  # once each, however many epochs and workers met them
    assert {row["id"] for row in rows} == set(BAD_REASONS)
    for row in rows:
        assert BAD_REASONS[row["id"]] in row["reason"]
        assert Path(row["file"]).name.startswith(row["id"])
    assert sum("skipped record" in message for message in caplog.messages) >= 2
    if cache == "disk":
        assert len(list((tmp_path / "cache").glob("*.pt"))) == 6


def test_check_record_reasons(tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(image)
    assert check_record({"image": str(image)}) is None
    assert check_record({"image": str(image), "report": "___"}) is None  # report not required here
    assert check_record({"image": str(image), "report": "___\t"}, require=("image", "report")).startswith("empty report")
    assert check_record({"image": str(image), "report": "___ Clear."}, require=("image", "report")) is None
    assert check_record({"image": str(image), "mask": str(tmp_path / "m.png")}) == f"mask file not found: {tmp_path / 'm.png'}"
    assert "field 'label'" in check_record({"image": str(image), "label": 2.5})


def test_collate_drops_none_and_keeps_ragged_fields_as_lists():
    items = [
        {"image": np.ones((1, 2, 3), np.float32), "id": "a", "boxes": [{"phrase": "p", "x": 0, "y": 0, "w": 1, "h": 1}], "meta": {"spacing": None}},
        None,
        {"image": np.zeros((1, 2, 3), np.float32), "id": "b", "boxes": [], "meta": {"spacing": (1.0, 1.0)}},
    ]
    batch = collate_skipping_none(items)
    assert batch["image"].shape == (2, 1, 2, 3) and batch["id"] == ["a", "b"]
    assert batch["boxes"] == [items[0]["boxes"], []] and batch["meta"] == [{"spacing": None}, {"spacing": (1.0, 1.0)}]
    labelled = collate_skipping_none([{"labels": {"nodule": 1, "effusion": 0}}, {"labels": {"nodule": 0, "effusion": 1}}])
    assert labelled["labels"]["nodule"].tolist() == [1, 0] and labelled["labels"]["effusion"].tolist() == [0, 1]
    assert collate_skipping_none([{"labels": {"a": 1}}, {"labels": {"b": 1}}])["labels"] == [{"a": 1}, {"b": 1}]
    assert collate_skipping_none([None, None]) is None
    assert collate_skipping_none([[{"x": torch.ones(2)}, {"x": torch.zeros(2)}]])["x"].shape == (2, 2)


def test_validate_imaged_names_file_and_shapes():
    check = ValidateImaged(["image"], expected_channels=1, min_size=(4, 4))
    good = {"image": np.zeros((1, 5, 6), np.float32), "image_meta": {"source": "/data/a.dcm"}}
    assert check(good) is good
    with pytest.raises(ImageReadError, match=r"/data/a.dcm: image: expected shape \(1, 2 spatial dims\) but got \(3, 5, 6\)"):
        check({**good, "image": np.zeros((3, 5, 6), np.float32)})
    with pytest.raises(ImageReadError, match=r"expected shape .* but got \(5, 6\)"):
        check({**good, "image": np.zeros((5, 6), np.float32)})
    with pytest.raises(ImageReadError, match=r"spatial size \(3, 6\) is below the minimum \(4, 4\)"):
        check({**good, "image": np.zeros((1, 3, 6), np.float32)})
    infinite = torch.zeros((1, 5, 6))
    infinite[0, 1, 1] = float("inf")
    with pytest.raises(ImageReadError, match="1 NaN/Inf"):
        check({**good, "image": infinite})


def test_programming_errors_are_not_swallowed():
    broken = Dataset([{"image": 1}], Lambdad("image", lambda value: value + "text"))
    with pytest.raises(RuntimeError) as caught:
        SafeDataset(broken)[0]
    assert isinstance(caught.value.__cause__, TypeError)


def test_skipped_records_threads_and_second_writer_do_not_duplicate(tmp_path):
    path = tmp_path / "skipped.csv"
    first = SkippedRecords(path)
    threads = [threading.Thread(target=first.add, args=({"id": f"r{i % 5}", "image": f"/x/{i % 5}.png"}, "bad")) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    second = SkippedRecords(path)  # what a loader worker process holds
    assert second.add({"id": "r1", "image": "/x/1.png"}, "bad") is False
    assert second.add({"id": "r9", "image": "/x/9.png"}, ImageReadError("/x/9b.png", "corrupt")) is True
    rows = read_skipped_csv(path)
    assert path.read_text().splitlines()[0] == "id,file,reason"
    assert sorted(row["id"] for row in rows) == ["r0", "r1", "r2", "r3", "r4", "r9"]
    assert rows[-1] == {"id": "r9", "file": "/x/9b.png", "reason": "corrupt"}
    assert len(first) == 6


@pytest.mark.parametrize("count, drop_last, batch_size", [(10, False, 3), (11, True, 5)])
def test_distributed_ranks_see_disjoint_samples(count, drop_last, batch_size):
    dataset = Dataset([{"index": index} for index in range(count)])
    per_rank = []
    for rank in (0, 1):
        loader = build_loader(dataset, batch_size=batch_size, shuffle=True, seed=7, drop_last=drop_last, distributed=True, rank=rank, world_size=2)
        loader.set_epoch(2)
        per_rank.append([int(value) for batch in loader for value in batch["index"]])
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(set(per_rank[0]) | set(per_rank[1])) == count - (count % 2 if drop_last else 0)
    assert per_rank[0] != sorted(per_rank[0]) or per_rank[1] != sorted(per_rank[1])  # shuffled


def test_epoch_order_depends_only_on_seed_and_epoch():
    dataset = Dataset([{"index": index} for index in range(20)])

    def order(seed: int, epoch: int) -> list[int]:
        loader = build_loader(dataset, batch_size=5, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return [int(value) for batch in loader for value in batch["index"]]

    assert order(1, 0) == order(1, 0) and sorted(order(1, 0)) == list(range(20))
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    fresh = build_loader(dataset, batch_size=5, shuffle=False)
    assert [int(value) for batch in fresh for value in batch["index"]] == list(range(20))


def test_cache_mode_errors(tmp_path):
    with pytest.raises(ConfigError, match="cache_dir"):
        build_dataset([], pipeline(), cache="disk")
    with pytest.raises(ConfigError, match="cache must be one of"):
        build_dataset([], pipeline(), cache="gpu")
