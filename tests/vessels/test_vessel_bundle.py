"""MONAI bundle export: layout and metadata, preprocessing equal to ours, and `monai.bundle run` masks equal to ours."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from workbench.data.readers import read_image
from workbench.errors import ConfigError, RegistryError
from workbench.model_records import Preprocessing
from workbench.model_store import ModelStore
from workbench.registry import ModelRegistry
from workbench_plugins.vessels.bundle import bundle_preprocessing, export_bundle, export_bundle_command
from workbench_plugins.vessels.data_reading import inference_preprocessing, load_inference_item
from workbench_plugins.vessels.inference import predict_probabilities
from workbench_plugins.vessels.models import network_definition, register_vessel_models
from workbench_plugins.vessels.metrics import postprocess_mask

# MONAI's DICOM reader warns on every machine without NVIDIA's image codec; it is not what these tests check.
pytestmark = pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")

SMALL_UNET = {"channels": [8, 16, 32], "strides": [2, 2]}
ROI, THRESHOLD, MIN_AREA = 48, 0.5, 6


def _fundus(path: Path, height: int, width: int, seed: int, mode: str = "RGB") -> Path:
    """A fundus-like picture: textured disc (red well above the FOV threshold) on black."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:height, :width]
    disc = (rows - height / 2) ** 2 + (columns - width / 2) ** 2 < (0.47 * min(height, width)) ** 2
    picture = ((rng.random((height, width, 3)) * 120 + 60) * disc[..., None]).astype(np.uint8)
    Image.fromarray(picture if mode == "RGB" else picture[..., 1], mode=mode).save(path)
    return path


def _store_model(root: Path, normalisation: str, extra: dict) -> tuple[ModelStore, torch.nn.Module]:
    registry = ModelRegistry()
    register_vessel_models(registry)
    torch.manual_seed(0)
    network = registry.create_model("vessel-unet", **SMALL_UNET)
    store = ModelStore(root, registry=registry, memory_budget_bytes=None)
    store.save(network, name="vessels", factory="vessel-unet", task="segmentation", config=SMALL_UNET,
               preprocessing=inference_preprocessing(network, normalisation=normalisation), plugin="vessels", extra=extra)
    return store, network.eval()


def _our_mask(network: torch.nn.Module, image: Path, normalisation: str, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """What the vessels plugin itself predicts: its reading, normalisation, sliding windows and post-processing."""
    item = load_inference_item({"image": str(image)}, with_reference=False, normalisation=normalisation)
    probability = predict_probabilities(network, item["image"], ROI, 0.25, 4, "cpu")[0].numpy()
    return postprocess_mask(probability, THRESHOLD, min_area), probability


def _assert_same_mask(bundle_mask_file: Path, ours: np.ndarray, probability: np.ndarray) -> None:
    stored = np.asarray(nib.load(bundle_mask_file).dataobj)
    assert stored.shape[:2] == ours.shape and int(np.prod(stored.shape[2:])) == 1
    differ = stored.reshape(ours.shape).astype(bool) != ours
    # Equal; a pixel within float noise of the threshold may only differ if the two runs round differently.
    assert not differ[np.abs(probability - THRESHOLD) > 1e-4].any(), f"{int(differ.sum())} pixels differ"
    assert int(differ.sum()) <= 2
    assert 0 < ours.sum() < ours.size


@pytest.fixture(scope="module")
def fov_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("fov_bundle")
    store, network = _store_model(root / "store", "fov", {"roi_size": ROI, "threshold": THRESHOLD, "min_component_area": MIN_AREA})
    bundle = export_bundle(store, "vessels:latest", root / "bundle", network_definition("vessel-unet", SMALL_UNET))
    images = root / "images"
    images.mkdir()
    _fundus(images / "wide.png", 70, 101, seed=1)  # not square, so a transposed read cannot pass
    _fundus(images / "grey.png", 52, 64, seed=2, mode="L")  # grey: repeated to RGB as our reader does
    return {"root": root, "store": store, "network": network, "bundle": bundle, "images": images}


def test_bundle_layout_metadata_and_weights(fov_bundle):
    bundle, store = fov_bundle["bundle"], fov_bundle["store"]
    for relative in ("configs/metadata.json", "configs/inference.json", "configs/logging.conf", "models/model.pt", "docs/README.md"):
        assert (bundle / relative).is_file(), relative
    metadata = json.loads((bundle / "configs/metadata.json").read_text())
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "task", "description", "authors",
                "copyright", "license", "network_data_format", "schema", "required_packages_version"):
        assert key in metadata, key
    assert metadata["version"] in metadata["changelog"]
    image_format = metadata["network_data_format"]["inputs"]["image"]
    assert image_format["num_channels"] == 3 and image_format["spatial_shape"] == [ROI, ROI]
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == 1
    assert "medvl-workbench" in metadata["required_packages_version"]  # the FOV normalisation is workbench code
    assert metadata["workbench"]["ref"] == "vessels:v1"

    state = torch.load(bundle / "models/model.pt", weights_only=True)
    stored, _ = store.load_state_dict("vessels")
    assert state.keys() == stored.keys() and all(torch.equal(state[key], stored[key]) for key in state)

    inference = json.loads((bundle / "configs/inference.json").read_text())
    for name in ("bundle_root", "device", "ckpt_path", "network_def", "network", "preprocessing", "inferer", "postprocessing",
                 "dataset", "evaluator", "run"):
        assert name in inference, name
    assert inference["network_def"]["_target_"] == "monai.networks.nets.UNet"
    assert inference["inferer"]["_target_"] == "SlidingWindowInferer" and inference["roi_size"] == [ROI, ROI]
    workflow = ConfigWorkflow(config_file=str(bundle / "configs/inference.json"), meta_file=str(bundle / "configs/metadata.json"),
                              workflow_type="infer")
    workflow.initialize()
    assert not workflow.check_properties()  # every property MONAI requires of an inference bundle is there


@pytest.mark.parametrize("normalisation", ["fov", "fov-extend", "image"])
def test_bundle_preprocessing_equals_ours(fov_bundle, normalisation):
    preprocessing = inference_preprocessing(None, normalisation=normalisation)
    transform = ConfigParser({"pre": {"_target_": "Compose", "transforms": bundle_preprocessing(preprocessing)}}).get_parsed_content("pre")
    for name in ("wide.png", "grey.png"):
        image = fov_bundle["images"] / name
        theirs = transform({"image": str(image)})["image"]
        ours = load_inference_item({"image": str(image)}, with_reference=False, normalisation=normalisation)["image"]
        assert tuple(theirs.shape) == tuple(ours.shape) and theirs.dtype == torch.float32
        np.testing.assert_allclose(theirs.numpy(), ours.numpy(), atol=1e-5)


@pytest.mark.parametrize("preprocessing", [
    Preprocessing(image_size=32, channels=3, intensity="minmax"),
    Preprocessing(image_size=32, channels=3, intensity="zscore", mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3]),
    Preprocessing(image_size=32, channels=1, intensity="window", mean=0.1, std=0.5, extra={"window": [0.4, 0.5]}),
    Preprocessing(image_size=32, channels=3, intensity="none"),
], ids=["minmax", "fixed-mean-std", "window", "none"])
def test_bundle_preprocessing_of_record_intensity_modes(tmp_path, preprocessing):
    image_path = _fundus(tmp_path / "grey.png", 20, 30, seed=3, mode="L")
    ours = read_image(image_path)[0].astype(np.float64)
    if preprocessing.channels == 3:
        ours = np.repeat(ours, 3, axis=0)
    if preprocessing.intensity == "minmax":
        ours = (ours - ours.min()) / (ours.max() - ours.min())
    elif preprocessing.intensity == "window":
        centre, width = preprocessing.extra["window"]
        ours = np.clip((ours - (centre - width / 2)) / width, 0.0, 1.0)
    if preprocessing.mean:
        ours = (ours - np.asarray(preprocessing.mean)[:, None, None]) / np.asarray(preprocessing.std)[:, None, None]
    transform = ConfigParser({"pre": {"_target_": "Compose", "transforms": bundle_preprocessing(preprocessing)}}).get_parsed_content("pre")
    np.testing.assert_allclose(transform({"image": str(image_path)})["image"].numpy(), ours, atol=1e-5)


def test_monai_bundle_run_gives_our_masks(fov_bundle):
    for package in ("fire", "ignite"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"`python -m monai.bundle run` needs `{package}` (MONAI's CLI and evaluator), which is not installed")
    out = fov_bundle["root"] / "bundle_out"
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    completed = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(fov_bundle["bundle"] / "configs" / "inference.json"),
         "--input_dir", str(fov_bundle["images"]), "--output_dir", str(out)],
        capture_output=True, text=True, timeout=300, env=environment)
    assert completed.returncode == 0, completed.stderr[-4000:]
    for name in ("wide", "grey"):
        ours, probability = _our_mask(fov_bundle["network"], fov_bundle["images"] / f"{name}.png", "fov", MIN_AREA)
        _assert_same_mask(out / f"{name}_vessels.nii.gz", ours, probability)


def test_bundle_workflow_with_monai_only_preprocessing_gives_our_masks(tmp_path):
    pytest.importorskip("ignite", reason="the bundle's SupervisedEvaluator needs pytorch-ignite")
    store, network = _store_model(tmp_path / "store", "image", {"roi_size": ROI, "threshold": THRESHOLD})
    bundle = export_bundle(store, "vessels", tmp_path / "bundle", network_definition("vessel-unet", SMALL_UNET))
    inference = json.loads((bundle / "configs/inference.json").read_text())
    assert "workbench_plugins" not in json.dumps(inference)  # runs with MONAI alone
    images = tmp_path / "images"
    images.mkdir()
    _fundus(images / "wide.png", 70, 101, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow = ConfigWorkflow(config_file=str(bundle / "configs/inference.json"), workflow_type="infer",
                                  input_dir=str(images), output_dir=str(tmp_path / "out"))
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    ours, probability = _our_mask(network, images / "wide.png", "image", 0)
    _assert_same_mask(tmp_path / "out" / "wide_vessels.nii.gz", ours, probability)


def test_a_network_def_that_does_not_build_the_stored_network_is_refused(tmp_path):
    store, _ = _store_model(tmp_path / "store", "image", {"roi_size": ROI})
    wrong = network_definition("vessel-unet", {"channels": [8, 16, 64], "strides": [2, 2]})
    with pytest.raises(ConfigError, match="does not build the stored network"):
        export_bundle(store, "vessels", tmp_path / "bundle", wrong)
    assert not (tmp_path / "bundle").exists()
    with pytest.raises(RegistryError, match="no stored model named 'nothing'"):
        export_bundle(store, "nothing:v1", tmp_path / "bundle", wrong)


def test_export_bundle_command_writes_the_bundle(fov_bundle, tmp_path):
    result = CliRunner().invoke(export_bundle_command, ["vessels:v1", str(tmp_path / "exported"), "--store", str(fov_bundle["store"].root)])
    assert result.exit_code == 0, result.output
    assert "vessels:v1" in result.output
    assert json.loads((tmp_path / "exported/configs/inference.json").read_text())["network_def"] == \
        json.loads((fov_bundle["bundle"] / "configs/inference.json").read_text())["network_def"]
    assert (tmp_path / "exported/models/model.pt").is_file()


def _schema_reachable() -> bool:
    try:
        socket.create_connection(("github.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_monai_verify_metadata(fov_bundle):
    if importlib.util.find_spec("jsonschema") is None or importlib.util.find_spec("fire") is None:
        pytest.skip("`monai.bundle verify_metadata` needs jsonschema and fire, which are not installed")
    if not _schema_reachable():
        pytest.skip("`monai.bundle verify_metadata` downloads MONAI's metadata schema, and this machine is offline")
    completed = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(fov_bundle["bundle"] / "configs/metadata.json"),
         "--filepath", str(fov_bundle["root"] / "schema.json")], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-4000:]
