"""Vessel data pipeline (patches, full images, tube, bad records) and sliding-window inference."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from PIL import Image

from tests.helpers.shared_data import CHASE_DB1, requires_chase_db1
from monai.transforms import NormalizeIntensity

from workbench.data.skipped import SkippedRecords
from workbench.distributed import DistributedContext
from workbench.train import TrainSettings
from workbench.errors import ConfigError, DataError
from workbench.builtin import build_fundus_phantoms
from workbench_plugins.vessels.builders import build_chase_db1
from workbench_plugins.vessels.data import VesselPipelineSettings, build_vessel_dataset, build_vessel_datasets, build_vessel_loader
from workbench_plugins.vessels.data import records_per_batch, vessel_training_dataset
from workbench_plugins.vessels.data_reading import inference_preprocessing, label_from_mask_file, load_inference_item, normalise_image
from workbench_plugins.vessels.inference import predict_probabilities, vessel_probability
from workbench_plugins.vessels.skeleton_tube import SkeletonTubed, skeleton_tube
from workbench_plugins.vessels.topology.masks import fov_from_fundus


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> list[dict]:
    return build_fundus_phantoms(tmp_path_factory.mktemp("phantoms"), n=4, size=64, seed=3)


def save(path: Path, pixels: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return str(path)


# --- the tube ---------------------------------------------------------------------------------------------------------

def bar(width: int) -> np.ndarray:
    mask = np.zeros((21, 41), bool)
    mask[10 - width // 2: 10 + width // 2 + 1, 5:36] = True
    return mask


@pytest.mark.parametrize("radius, inside, rows", [(0, True, 1), (1, True, 3), (2, True, 5), (2, False, 5)])
def test_skeleton_tube_of_a_bar(radius, inside, rows):
    tube = skeleton_tube(bar(7), radius=radius, inside_mask=inside)
    assert tube[:, 20].sum() == rows and tube[10, 20]  # the tube across the middle of the bar is centred on row 10


def test_tube_stays_inside_a_thin_vessel():
    thin = bar(1)
    assert np.array_equal(skeleton_tube(thin, radius=2), thin & skeleton_tube(thin, radius=2, inside_mask=False))
    assert skeleton_tube(thin, radius=2, inside_mask=False)[:, 20].sum() == 5
    assert not skeleton_tube(np.zeros((9, 9), bool)).any()


def test_skeleton_tubed_transform_keeps_type_and_shape():
    label = torch.from_numpy(bar(5)[None].astype(np.float32))
    out = SkeletonTubed("label", radius=1)({"label": label})
    assert isinstance(out["tube"], torch.Tensor) and out["tube"].shape == (1, 21, 41) and out["tube"].dtype == torch.float32
    assert np.array_equal(out["tube"][0].numpy() > 0, skeleton_tube(bar(5), radius=1))
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        SkeletonTubed("label")({"label": np.zeros((2, 5, 5), np.float32)})


# --- the pipeline --------------------------------------------------------------------------------------------------------

def test_training_batches_shapes_and_cached_tube(phantoms):
    settings = VesselPipelineSettings(patch_size=32, patches_per_image=3, tube_radius=1)
    dataset = build_vessel_dataset(phantoms, settings, train=True)
    cached = dataset.dataset._cache[0]
    assert cached["tube"].shape == (1, 64, 64)  # the tube is part of the cached, deterministic head
    loader = build_vessel_loader(dataset, records_per_batch=2, seed=0)
    loader.set_epoch(0)
    batches = list(loader)
    assert [batch["image"].shape for batch in batches] == [(6, 3, 32, 32), (6, 3, 32, 32)]
    batch = batches[0]
    for key in ("label", "fov", "tube"):
        assert batch[key].shape == (6, 1, 32, 32) and set(batch[key].unique().tolist()) <= {0.0, 1.0}
    assert bool((batch["tube"] <= batch["label"]).all()) and batch["tube"].sum() > 0
    assert type(batch["image"]) is torch.Tensor and batch["image"].dtype == torch.float32


def cross_record(folder: Path) -> dict:
    """A 64x64 fundus disc whose only vessels are a thin cross in the middle, far from the border."""
    rows, cols = np.mgrid[:64, :64]
    image = np.zeros((64, 64, 3), np.uint8)
    image[(rows - 31.5) ** 2 + (cols - 31.5) ** 2 <= 30 ** 2] = (170, 80, 40)
    mask = np.zeros((64, 64), np.uint8)
    mask[31, 20:44] = mask[20:44, 31] = 255
    return {"id": "cross", "image": save(folder / "cross.png", image), "mask": save(folder / "cross_mask.png", mask), "fov": None,
            "split": "train"}


@pytest.mark.parametrize("positive_fraction, centre", [(1.0, 1.0), (0.0, 0.0)])
def test_patch_centres_follow_the_positive_fraction(tmp_path, positive_fraction, centre):
    settings = VesselPipelineSettings(patch_size=16, patches_per_image=12, positive_fraction=positive_fraction, augment=False)
    patches = build_vessel_dataset([cross_record(tmp_path)], settings, train=True, cache="none")[0]
    assert len(patches) == 12
    assert all(float(patch["label"][0, 8, 8]) == centre and float(patch["fov"][0, 8, 8]) == 1.0 for patch in patches)


def test_same_seed_same_patches(phantoms):
    settings = VesselPipelineSettings(patch_size=32, patches_per_image=2)

    def first_batch(seed: int) -> torch.Tensor:
        dataset = build_vessel_dataset(phantoms, settings, train=True, cache="none")
        loader = build_vessel_loader(dataset, records_per_batch=2, seed=seed)
        loader.set_epoch(1)
        return next(iter(loader))["image"]

    assert torch.equal(first_batch(5), first_batch(5)) and not torch.equal(first_batch(5), first_batch(6))


def test_full_images_normalised_inside_fov_and_padded(phantoms):
    settings = VesselPipelineSettings(pad_multiple=48, tube_radius=1, normalisation="fov")
    datasets = build_vessel_datasets(phantoms, settings, train_splits=("train", "val", "test"), eval_splits=("train", "val", "test"))
    item = datasets.eval[0]
    assert item["image"].shape == (3, 96, 96) and item["label"].shape == item["fov"].shape == item["tube"].shape == (1, 96, 96)
    assert item["spatial_shape"].tolist() == [64, 64]
    inside = item["fov"][0] > 0.5
    assert not bool(inside[64:].any()) and not bool(item["label"][0, :, 64:].any())
    values = item["image"][:, inside]
    assert torch.allclose(values.mean(dim=1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(values.std(dim=1, unbiased=False), torch.ones(3), atol=1e-3)
    assert bool((item["image"][:, ~inside] == 0).all())


def test_fov_derived_when_the_record_has_none(tmp_path, phantoms):
    record = {**phantoms[0], "fov": None}
    item = build_vessel_dataset([record], VesselPipelineSettings(pad_multiple=1), train=False, cache="none")[0]
    image = np.asarray(Image.open(record["image"]).convert("RGB"))
    assert np.array_equal(item["fov"][0].numpy() > 0.5, fov_from_fundus(image))
    unlabelled = {key: value for key, value in record.items() if key != "mask"}  # a user's image to predict
    item = build_vessel_dataset([unlabelled], VesselPipelineSettings(tube_radius=1), train=False, cache="none")[0]
    assert "label" not in item and "tube" not in item and item["image"].shape == (3, 64, 64) and item["fov"].shape == (1, 64, 64)


def test_bad_records_are_skipped_and_listed(tmp_path, phantoms, caplog):
    small_mask = save(tmp_path / "small.png", np.zeros((40, 40), np.uint8))
    grey = np.asarray(Image.open(phantoms[1]["mask"])).astype(np.float64)
    lossy = np.clip(grey * 0.9 + np.arange(64)[None, :] % 20, 0, 255).astype(np.uint8)  # 40 grey levels, as a JPEG mask has
    noisy = save(tmp_path / "noisy.png", lossy)
    records = [
        {**phantoms[0], "id": "wrong-size", "mask": small_mask},
        {**phantoms[1], "id": "grey-mask", "mask": noisy},
        {**phantoms[2], "id": "missing", "image": str(tmp_path / "nowhere.png")},
        phantoms[3],
    ]
    skipped = SkippedRecords(tmp_path / "run" / "skipped.csv")
    settings = VesselPipelineSettings(patch_size=32, patches_per_image=1)
    with caplog.at_level(logging.WARNING, logger="workbench.vessels"):
        dataset = build_vessel_dataset(records, settings, train=True, skipped=skipped)
    loader = build_vessel_loader(dataset, records_per_batch=4, shuffle=False)
    loader.set_epoch(0)
    batch = next(iter(loader))
    assert sorted(batch["id"]) == sorted(["grey-mask", phantoms[3]["id"]])
    assert set(batch["label"].unique().tolist()) <= {0.0, 1.0}
    assert any("not binary" in message and "noisy.png" in message for message in caplog.messages)
    rows = {row[0]: row for row in skipped.rows}
    assert set(rows) == {"wrong-size", "missing"}
    assert rows["wrong-size"][1] == small_mask and phantoms[0]["image"] in rows["wrong-size"][2] and "40x40" in rows["wrong-size"][2]
    assert "nowhere.png" in rows["missing"][2]
    assert (tmp_path / "run" / "skipped.csv").read_text().count("\n") == 3  # header + 2 rows
    full = build_vessel_dataset([records[1]], settings, train=False, cache="none")[0]
    assert np.array_equal(full["label"][0, :64, :64].numpy() > 0, grey > 0)  # the JPEG-like noise is background again


@pytest.mark.parametrize("values, expected, warns", [
    (np.array([[0, 255], [255, 0]]), [[0, 1], [1, 0]], False),
    (np.array([[0, 1], [2, 3]]), [[0, 1], [1, 1]], True),  # a label map (artery, vein, crossing): every label is vessel
    (np.array([[3, 200], [250, 9]]), [[0, 1], [1, 0]], True),  # lossy: thresholded at half the maximum
    (np.array([[0.1, 0.9], [0.6, 0.0]]), [[0, 1], [1, 0]], True),  # a soft mask
])
def test_mask_values_to_label(values, expected, warns, caplog):
    with caplog.at_level(logging.WARNING, logger="workbench.vessels"):
        label = label_from_mask_file(values[None].astype(np.float32), "m.png")
    assert np.array_equal(label, np.array(expected, bool)) and bool(caplog.messages) == warns


def test_unusable_mask_values_are_errors():
    with pytest.raises(DataError, match="NaN"):
        label_from_mask_file(np.array([[[0, np.nan]]], np.float32), "m.png")
    with pytest.raises(DataError, match="colour"):
        label_from_mask_file(np.stack([np.zeros((2, 2)), np.ones((2, 2)), np.zeros((2, 2))]).astype(np.float32), "m.png")


def test_job_settings_build_the_training_loader(phantoms):
    from workbench_plugins.vessels.settings import VesselDataSettings

    data = VesselDataSettings(patch_size=32, patches_per_image=2, positive_fraction=0.5)
    dataset = vessel_training_dataset(phantoms, data, tube_radius=1, skipped=SkippedRecords())
    loader = build_vessel_loader(dataset, TrainSettings(batch_size=4), 0, DistributedContext())  # 4 patches: 2 records
    loader.set_epoch(0)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["tube"].shape == (4, 1, 32, 32)
    assert records_per_batch(16, 8) == 2 and records_per_batch(5, 8) == 1


def test_prediction_input_is_prepared_as_in_training(phantoms):
    item = load_inference_item(phantoms[0])
    full = build_vessel_dataset(phantoms[:1], VesselPipelineSettings(pad_multiple=48), train=False, cache="none")[0]
    assert torch.equal(item["image"], full["image"][:, :64, :64])  # the same preprocessing for evaluation and prediction
    assert np.array_equal(item["reference"], full["label"][0, :64, :64].numpy() > 0) and item["reference"].dtype == bool
    assert np.array_equal(item["fov"], full["fov"][0, :64, :64].numpy() > 0)
    assert item["display"].shape == (3, 64, 64) and item["display"].dtype == np.float32
    picture = np.asarray(Image.open(phantoms[0]["image"]).convert("RGB"))
    assert np.array_equal(np.rint(np.moveaxis(item["display"], 0, -1) * 255).astype(np.uint8), picture)
    assert item["meta"]["source"] == phantoms[0]["image"] and load_inference_item(phantoms[0], with_reference=False)["reference"] is None


def test_prediction_on_a_picture_without_aperture_uses_the_whole_image(tmp_path, caplog):
    path = save(tmp_path / "dark.png", np.full((20, 30), 5, np.uint8))  # red below the FOV threshold everywhere
    with caplog.at_level(logging.WARNING, logger="workbench.vessels"):
        item = load_inference_item({"image": path})
    assert item["fov"].all() and item["image"].shape == (3, 20, 30) and any("whole image" in text for text in caplog.messages)


def test_whole_image_normalisation_is_monais():
    image = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    expected = NormalizeIntensity(channel_wise=True)(image.copy())
    assert np.allclose(normalise_image(image, np.zeros((16, 16), bool), "image"), np.asarray(expected), atol=1e-6)
    with pytest.raises(ConfigError, match="normalisation"):
        normalise_image(image, np.ones((16, 16), bool), "percentile")
    preprocessing = inference_preprocessing(None, roi_size=128, normalisation="image")
    assert preprocessing.channels == 3 and preprocessing.image_size == 128 and preprocessing.extra["normalisation"] == "image"


def test_fov_extension_copies_the_nearest_fov_pixel_outward():
    image = np.random.default_rng(1).random((3, 12, 12)).astype(np.float32)
    fov = np.zeros((12, 12), bool)
    fov[3:9, 2:10] = True
    zeroed, extended = normalise_image(image, fov, "fov"), normalise_image(image, fov, "fov-extend")
    assert np.array_equal(extended[:, fov], zeroed[:, fov]) and bool((zeroed[:, ~fov] == 0).all())
    assert np.array_equal(extended[:, 0, 5], zeroed[:, 3, 5])     # above the FOV: its top row, same column
    assert np.array_equal(extended[:, 11, 11], zeroed[:, 8, 9])   # the far corner: the FOV's nearest corner
    assert np.array_equal(extended[:, 5, 0], zeroed[:, 5, 2])     # left of it: its left column, same row
    assert inference_preprocessing(None, normalisation="fov-extend").extra["fov"]["outside"] == "nearest FOV pixel"


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="positive_fraction"):
        VesselPipelineSettings(positive_fraction=1.5)
    with pytest.raises(ConfigError, match="no vessel record has a split"):
        build_vessel_datasets([{"image": "a.png", "mask": "b.png", "split": "test"}], VesselPipelineSettings())


@requires_chase_db1
def test_real_chase_image_through_both_pipelines(tmp_path):
    records = [record for record in build_chase_db1(CHASE_DB1) if record["id"] in ("Image_01L", "Image_11L")]
    settings = VesselPipelineSettings(patch_size=64, patches_per_image=2, tube_radius=1)
    datasets = build_vessel_datasets(records, settings)
    item = datasets.eval[0]
    assert item["id"] == "Image_11L" and item["image"].shape == (3, 960, 1008) and item["spatial_shape"].tolist() == [960, 999]
    assert 0.55 < float(item["fov"].mean()) * 1008 / 999 < 0.8 and 0.05 < float(item["label"].sum() / item["fov"].sum()) < 0.15
    patches = datasets.train[0]
    assert len(patches) == 2 and patches[0]["tube"].shape == (1, 64, 64)


# --- sliding-window inference -------------------------------------------------------------------------------------------

def unet(out_channels: int = 1) -> UNet:
    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=3, out_channels=out_channels, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)


@pytest.mark.parametrize("height, width", [(97, 131), (64, 64), (40, 150)])
def test_any_image_size(height, width):
    image = torch.randn(3, height, width)
    probabilities = predict_probabilities(unet(), image, roi_size=64, overlap=0.25, sw_batch_size=2, device="cpu")
    assert probabilities.shape == (1, height, width) and float(probabilities.min()) >= 0 and float(probabilities.max()) <= 1


def test_equals_a_direct_forward_when_one_window_covers_the_image():
    model = unet().train()
    image = torch.randn(3, 96, 128)
    probabilities = predict_probabilities(model, image, roi_size=(96, 128), overlap=0.25, sw_batch_size=1, device=None)
    assert model.training  # the caller's mode is restored
    model.eval()
    with torch.no_grad():
        direct = torch.sigmoid(model(image[None]))[0]
    assert torch.allclose(probabilities, direct, atol=1e-5)


def test_windows_stitch_exactly_for_a_pointwise_model():
    torch.manual_seed(1)
    pointwise = torch.nn.Conv2d(3, 2, kernel_size=1)
    image = torch.randn(3, 97, 131)
    probabilities = predict_probabilities(pointwise, image, roi_size=32, overlap=0.5, sw_batch_size=3, device="cpu")
    with torch.no_grad():
        direct = torch.softmax(pointwise(image[None]), dim=1)[0]
    assert probabilities.shape == (2, 97, 131) and torch.allclose(probabilities, direct, atol=1e-5)
    assert torch.allclose(probabilities.sum(0), torch.ones(97, 131), atol=1e-5)
    assert torch.equal(vessel_probability(probabilities), probabilities[1:2])


def test_nan_is_a_clear_error():
    model = unet()
    with pytest.raises(DataError, match="NaN"):
        predict_probabilities(model, torch.full((3, 32, 32), float("nan")), roi_size=32, source="bad.png")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(DataError, match="NaN/Inf logits") as error:
        predict_probabilities(model, torch.randn(3, 32, 32), roi_size=32, source="eye.png")
    assert error.value.path == "eye.png"
