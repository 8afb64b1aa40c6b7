"""``workbench classify train|evaluate``: MONAI networks and an encoder head, three data layouts, metrics, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from tests.counterfactual.cf_images import write_blob_folder, write_phantom_folder, write_three_class_manifest
from workbench.cli import build_cli
from workbench.config import load_settings
from workbench.data.phantoms import make_cxr_study
from workbench.errors import ConfigError
from workbench.host import create_plugin_manager
from workbench.model_store import ModelStore
from workbench_plugins.counterfactual.jobs.classify_evaluate import load_classifier
from workbench_plugins.counterfactual.data import labelled_dataset, labelled_records, read_lesion_mask
from workbench_plugins.counterfactual.metrics import classification_metrics, predict
from workbench_plugins.counterfactual.settings import ClassifyTrainSettings, LabelledDataSettings


@pytest.fixture(scope="module")
def host():
    return create_plugin_manager()


@pytest.fixture(scope="module")
def cli(host):
    return build_cli(host)  # once per host: a second build would add the plugins' commands twice


@pytest.fixture(scope="module")
def blob_folder(tmp_path_factory) -> Path:
    """48 + 48 textured 32x32 PNGs, half with a bright blob, and one corrupt PNG in the lesion folder."""
    root = write_blob_folder(tmp_path_factory.mktemp("blobs") / "data", per_class=48, size=32, seed=1)
    (root / "lesion" / "zz-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)
    return root


def run_cli(cli, arguments: list[str]) -> str:
    result = CliRunner().invoke(cli, arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def blob_config(folder: Path, data_root: Path, **model) -> Path:
    config = {
        "run": {"output_root": str(folder / "runs"), "device": "cpu", "seed": 0},
        "data": {"source": "folder", "root": str(data_root), "image_size": 32, "augment": False,
                 "train_split": ["train", "val"], "eval_split": ["test", "val"]},
        "model": {"network": "classifier-resnet18", **model},
        "train": {"steps": 40, "batch_size": 16, "lr": 0.003, "warmup_steps": 2, "checkpoint_every": 20, "log_every": 10},
        "save": {"name": "blob-classifier", "store": str(folder / "store")},
        "examples": 2,
    }
    path = folder / "classify.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    metrics = classification_metrics(labels, probabilities, ["a", "b"])
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["confusion"] == [[1, 1], [1, 2]]
    # positive scores 0.7, 0.8, 0.4 against negatives 0.1, 0.6: 5 of 6 pairs ordered right.
    assert metrics["auroc"] == pytest.approx(5 / 6)
    assert metrics["support"] == [2, 3]
    one_class = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]), ["a", "b"])
    assert one_class["auroc"] is None and "no a images" in one_class["auroc_note"]


def test_phantom_records_carry_exact_lesion_masks(host, tmp_path):
    data = LabelledDataSettings(source="phantoms", root=tmp_path / "ph", phantoms={"n": 24, "size": 128, "seed": 2}, finding="any")
    records, classes = labelled_records(data, host.datasets.builders, tmp_path)
    assert classes == ["no_finding", "finding"] and len(records) == 24
    for index, record in enumerate(records):
        study = make_cxr_study(index, seed=2, size=128)
        assert record["label"] == int(bool(study.findings))
        mask = read_lesion_mask(record["lesion_masks"], 128)
        if study.findings:
            assert np.array_equal(mask, np.logical_or.reduce(list(study.masks.values())))
        else:
            assert mask is None
    nodule = LabelledDataSettings(source="phantoms", root=tmp_path / "ph", phantoms={"n": 24, "size": 128, "seed": 2}, finding="pleural_effusion",
                                  exclusive=True)
    kept, classes = labelled_records(nodule, host.datasets.builders, tmp_path)
    assert classes == ["no_pleural_effusion", "pleural_effusion"]
    for record in kept:
        findings = make_cxr_study(int(record["id"].split("-")[1]), seed=2, size=128).masks
        assert set(findings) <= {"pleural_effusion"} and record["label"] == int("pleural_effusion" in findings)
    with pytest.raises(ConfigError, match="nodules"):
        labelled_records(LabelledDataSettings(source="phantoms", root=tmp_path / "ph", finding="nodules"), host.datasets.builders, tmp_path)


def test_phantom_class_folder_with_dicom_reads_like_png(host, tmp_path):
    root = write_phantom_folder(tmp_path / "cxr", 8, seed=0)
    data = LabelledDataSettings(source="folder", root=root, image_size=64, channels=3, cache="none")
    records, classes = labelled_records(data, host.datasets.builders, tmp_path)
    assert classes == ["finding", "no_finding"] and len(records) == 8
    assert {Path(record["image"]).suffix for record in records} == {".png", ".dcm"}
    dataset = labelled_dataset(records, data, augment=False)
    for index, record in enumerate(records):
        item = dataset[index]
        assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
        assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
        number = int(Path(record["image"]).stem.split("-")[1])
        expected = make_cxr_study(number, seed=0, size=128).image
        small = np.asarray(Image.fromarray(expected).resize((64, 64), Image.BOX))
        assert np.abs(item["image"][0].numpy() - small).mean() < 0.01  # DICOM (12 bit) and PNG (8 bit) give the same picture


def test_train_and_evaluate_resnet_on_class_folder(cli, tmp_path, blob_folder):
    config = blob_config(tmp_path, blob_folder)
    index = Path(run_cli(cli, ["classify", "train", "--config", str(config)]).strip().splitlines()[-1])
    run = index.parent
    metrics = json.loads((run / "metrics.json").read_text())["classify"]
    assert metrics["classes"] == ["lesion", "normal"] and metrics["auroc"] >= 0.9 and metrics["accuracy"] >= 0.8
    assert sum(map(sum, metrics["confusion"])) == metrics["n"]
    with open(run / "skipped.csv") as handle:
        assert any(row[0] == "lesion/zz-corrupt.png" for row in csv.reader(handle))
    assert "AUROC" in index.read_text()
    store = ModelStore(tmp_path / "store")
    record = store.resolve("blob-classifier")
    assert record.task == "classification" and record.extra["classes"] == ["lesion", "normal"]
    assert record.preprocessing.image_size == 32 and record.preprocessing.channels == 1
    evaluate = {"run": {"output_root": str(tmp_path / "runs"), "device": "cpu"}, "model": "blob-classifier:v1", "store": str(tmp_path / "store"),
                "data": {"source": "folder", "root": str(blob_folder), "image_size": 32, "eval_split": ["test", "val"]}}
    (tmp_path / "evaluate.yaml").write_text(yaml.safe_dump(evaluate))
    evaluated = Path(run_cli(cli, ["classify", "evaluate", "--config", str(tmp_path / "evaluate.yaml")]).strip().splitlines()[-1])
    again = json.loads((evaluated.parent / "metrics.json").read_text())["evaluate"]
    assert again["auroc"] == pytest.approx(metrics["auroc"]) and again["confusion"] == metrics["confusion"]
    wrong = dict(evaluate, data={**evaluate["data"], "classes": ["normal", "lesion"]})
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(wrong))
    result = CliRunner().invoke(cli, ["classify", "evaluate", "--config", str(tmp_path / "wrong.yaml")])
    assert isinstance(result.exception, ConfigError) and "['lesion', 'normal']" in str(result.exception)


def test_densenet_three_classes_from_manifest(host, tmp_path):
    manifest = write_three_class_manifest(tmp_path / "three", per_class=10, size=32)
    settings = load_settings(ClassifyTrainSettings, None, [
        f"run.output_root={tmp_path / 'runs'}", "run.device=cpu", "data.source=manifest", f"data.root={manifest}", "data.image_size=32",
        "data.train_split=[train, val, test]", "data.eval_split=[train, val, test]", "model.network=classifier-densenet121",
        "train.steps=2", "train.batch_size=6", "save.name=three", f"save.store={tmp_path / 'store'}", "examples=0"])
    from workbench_plugins.counterfactual.jobs.classify import run_classify_train

    outcome = run_classify_train(settings, host.datasets.builders, progress=False)
    assert outcome.details["classes"] == ["bar", "blob", "plain"]
    assert np.array(outcome.metrics["confusion"]).shape == (3, 3) and outcome.metrics["n"] == 30
    assert 0.0 <= outcome.metrics["auroc"] <= 1.0
    model, record, classes = load_classifier("three", tmp_path / "store")
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 3) and record.factory == "classifier-densenet121"


class TinyEncoder(torch.nn.Module):
    """A real (small) image encoder with ``encode_image``: smoothing conv, global max pool, linear to 16-D."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, width, 5, padding=2), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(1),
                                       torch.nn.Flatten(), torch.nn.Linear(width, 16))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.net(images), dim=-1)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_head_on_stored_encoder(host, tmp_path, blob_folder, head):
    host.models.register("tiny-test-encoder", TinyEncoder, task="image-encoder", plugin="tests")
    try:
        torch.manual_seed(0)
        store = ModelStore(tmp_path / "store")
        store.save(TinyEncoder(), name="tiny-encoder", factory="tiny-test-encoder", task="image-encoder", config={},
                   preprocessing={"image_size": 24, "channels": 3, "intensity": "zscore", "mean": [0.5], "std": [0.25]})
        config = blob_config(tmp_path, blob_folder, network="classifier-encoder-head", encoder="tiny-encoder", head=head, hidden=32)
        settings = load_settings(ClassifyTrainSettings, config)
        from workbench_plugins.counterfactual.jobs.classify import run_classify_train

        outcome = run_classify_train(settings, host.datasets.builders, progress=False)
        assert outcome.steps == 0 and outcome.metrics["auroc"] >= 0.85
        model, record, classes = load_classifier("blob-classifier", tmp_path / "store")
        assert record.parent == "tiny-encoder:v1" and record.config["head"] == head
        data = LabelledDataSettings(source="folder", root=blob_folder, image_size=32, cache="none")
        records, _ = labelled_records(data, host.datasets.builders, tmp_path)
        test_set = labelled_dataset([r for r in records if r["split"] in ("test", "val")], data, augment=False)
        _, labels, probabilities = predict(model, test_set, torch.device("cpu"))
        assert classification_metrics(labels, probabilities, classes)["auroc"] == pytest.approx(outcome.metrics["auroc"])
    finally:
        host.models.unregister_plugin("tests")


def test_head_needs_an_encoder_with_encode_image(host, tmp_path, blob_folder):
    config = blob_config(tmp_path, blob_folder, network="classifier-encoder-head")
    settings = load_settings(ClassifyTrainSettings, config)
    from workbench_plugins.counterfactual.jobs.classify import run_classify_train

    with pytest.raises(ConfigError, match="model.encoder"):
        run_classify_train(settings, host.datasets.builders, progress=False)


@torch.no_grad()
def test_resnet_without_max_pool_gives_a_finer_gradcam_layer():
    from workbench_plugins.counterfactual.classifiers import ImageClassifier, resnet18_classifier

    sizes = {}
    for max_pool in (True, False):
        torch.manual_seed(0)
        model = resnet18_classifier(max_pool=max_pool).eval()
        layer = dict(model.named_modules())[model.gradcam_layer]
        seen = []
        handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(tuple(output.shape[-2:])))
        assert model(torch.rand(1, 1, 128, 128)).shape == (1, 2)
        handle.remove()
        sizes[max_pool] = seen[0]
    assert sizes == {True: (4, 4), False: (8, 8)}
    with pytest.raises(ValueError, match="ResNet option"):
        ImageClassifier("densenet121", max_pool=False)
    settings = load_settings(ClassifyTrainSettings, None, ["model.max_pool=false"])
    assert settings.model.max_pool is False and load_settings(ClassifyTrainSettings).model.max_pool is True


def test_small_cnn_learns_the_blobs_and_stores_small(cli, tmp_path, blob_folder):
    from workbench_plugins.counterfactual.baselines import baseline_maps

    config = blob_config(tmp_path, blob_folder, network="classifier-small-cnn", channels=[8, 16])
    index = Path(run_cli(cli, ["classify", "train", "--config", str(config)]).strip().splitlines()[-1])
    metrics = json.loads((index.parent / "metrics.json").read_text())["classify"]
    assert metrics["auroc"] >= 0.9 and metrics["accuracy"] >= 0.8
    model, record, classes = load_classifier("blob-classifier", tmp_path / "store")
    assert record.factory == "classifier-small-cnn" and record.config["image_size"] == 32 and record.config["channels"] == [8, 16]
    assert sum(parameter.numel() for parameter in model.parameters()) < 20_000
    assert sum(path.stat().st_size for path in (tmp_path / "store").rglob("*") if path.is_file()) < 200_000
    layer = dict(model.named_modules())[record.extra["gradcam_layer"]]
    seen = []
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(tuple(output.shape[-2:])))
    image = torch.rand(1, 1, 32, 32)
    saliency = baseline_maps(model, ["gradcam"], record.extra["gradcam_layer"])["gradcam"](image, 0)
    handle.remove()
    assert seen[0] == (8, 8) and saliency.shape == (32, 32) and np.isfinite(saliency).all()


def test_small_cnn_takes_one_size_and_has_no_max_pool_switch(host, tmp_path, blob_folder):
    from workbench_plugins.counterfactual.classifiers import small_cnn_classifier
    from workbench_plugins.counterfactual.jobs.classify import run_classify_train

    with pytest.raises(ValueError, match="multiple of 2\\*\\*3"):
        small_cnn_classifier(image_size=36)
    settings = load_settings(ClassifyTrainSettings, blob_config(tmp_path, blob_folder, network="classifier-small-cnn", max_pool=False))
    with pytest.raises(ConfigError, match="max_pool: false is a ResNet option; classifier-small-cnn"):
        run_classify_train(settings, host.datasets.builders, progress=False)
