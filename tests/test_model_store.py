"""The on-disk model store: round trips, versions and aliases, tamper refusal, concurrent writers."""

from __future__ import annotations

import ast
import hashlib
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest
import safetensors.torch
import torch
from monai.networks.nets import UNet
from torch import nn

from workbench.errors import IntegrityError, RegistryError
from workbench.model_records import ModelRecord, Preprocessing, describe_record, parse_ref
from workbench.model_files import state_for_saving
from workbench.model_store import ModelStore, default_store_root
from workbench.registry import ModelRegistry

REPO_ROOT = Path(__file__).resolve().parents[1]


class BatchNormConvNet(nn.Module):
    """Conv + BatchNorm (running-stat buffers) + linear head: (B, 1, 16, 16) -> (B, 3)."""

    def __init__(self, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Linear(width, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


class TiedTokenModel(nn.Module):
    """Embedding whose weight is shared with the output projection: (B, T) ids -> (B, T, vocab)."""

    def __init__(self, vocab: int = 11, dim: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.project = nn.Linear(dim, vocab, bias=False)
        self.project.weight = self.embed.weight

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.project(torch.tanh(self.embed(token_ids)))


def tiny_unet(**cfg: object) -> nn.Module:
    """A two-level MONAI UNet with batch norm."""
    return UNet(**cfg)


# name -> (factory, config, fixed input builder, preprocessing)
FACTORIES: dict[str, tuple[Callable[..., nn.Module], dict, Callable[[], torch.Tensor], Preprocessing]] = {
    "tiny-unet": (
        tiny_unet,
        {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
         "num_res_units": 1, "norm": "batch"},
        lambda: torch.linspace(-1, 1, 2 * 16 * 16).reshape(2, 1, 16, 16),
        Preprocessing(image_size=[16, 16], channels=1, intensity="zscore", mean=[0.5], std=[0.25]),
    ),
    "bn-convnet": (
        BatchNormConvNet,
        {"width": 5, "classes": 3},
        lambda: torch.cos(torch.arange(3 * 16 * 16, dtype=torch.float32)).reshape(3, 1, 16, 16),
        Preprocessing(image_size=16, channels=1, intensity="window", extra={"window_center": 40, "window_width": 400}),
    ),
    "tied-tokens": (
        TiedTokenModel,
        {"vocab": 11, "dim": 6},
        lambda: torch.arange(12).reshape(2, 6) % 11,
        Preprocessing(image_size=224, channels=3, intensity="minmax", mean=[0.48, 0.46, 0.41],
                      std=[0.27, 0.26, 0.28], tokenizer="bert-base-uncased", context_length=6),
    ),
}


def make_registry() -> ModelRegistry:
    registry = ModelRegistry()
    for name, (factory, _, _, _) in FACTORIES.items():
        registry.register(name, factory, task="test", plugin="tests")
    return registry


def trained_model(registry: ModelRegistry, name: str, seed: int) -> nn.Module:
    """A model whose weights and BatchNorm buffers differ from their initial values."""
    factory_name_cfg = FACTORIES[name][1]
    torch.manual_seed(seed)
    model = registry.create_model(name, **factory_name_cfg)
    example = FACTORIES[name][2]()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
        model.train()(example)  # moves BatchNorm running statistics
    return model.eval()


@pytest.fixture()
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store", make_registry())


@pytest.mark.parametrize("factory", sorted(FACTORIES))
def test_round_trip_is_bit_identical(store: ModelStore, factory: str) -> None:
    _, config, make_input, preprocessing = FACTORIES[factory]
    model = trained_model(store.registry, factory, seed=7)
    record = store.save(model, name=f"{factory}-m", factory=factory, task="test", config=config,
                        preprocessing=preprocessing, metrics={"dice": 0.75})
    loaded, loaded_record = store.load(f"{factory}-m")
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert list(loaded_state) == list(original_state)
    for key, tensor in original_state.items():
        assert loaded_state[key].dtype == tensor.dtype, key
        assert torch.equal(loaded_state[key], tensor), key
    example = make_input()
    with torch.no_grad():
        assert torch.equal(loaded.eval()(example), model(example))
    assert loaded_record.preprocessing == preprocessing
    assert loaded_record == record
    assert record.version == 1 and record.aliases == ["latest"] and record.metrics == {"dice": 0.75}


def test_tied_weights_stay_tied_after_load(store: ModelStore) -> None:
    model = trained_model(store.registry, "tied-tokens", seed=1)
    prepared = state_for_saving(model)
    assert prepared["embed.weight"].data_ptr() != prepared["project.weight"].data_ptr()
    store.save(model, name="tied", factory="tied-tokens", task="test", config=FACTORIES["tied-tokens"][1],
               preprocessing=FACTORIES["tied-tokens"][3])
    loaded, _ = store.load("tied")
    assert loaded.project.weight is loaded.embed.weight
    assert torch.equal(loaded.embed.weight, model.embed.weight)


def save_bn(store: ModelStore, seed: int, **kwargs: object):
    model = trained_model(store.registry, "bn-convnet", seed=seed)
    record = store.save(model, name="cls", factory="bn-convnet", task="test", config=FACTORIES["bn-convnet"][1],
                        preprocessing=FACTORIES["bn-convnet"][3], **kwargs)
    return model, record


def test_versions_increment_and_aliases_resolve(store: ModelStore) -> None:
    _, first = save_bn(store, seed=1)
    second_model, second = save_bn(store, seed=2, aliases=("best",), metrics={"auc": 0.91}, parent="cls:v1")
    _, third = save_bn(store, seed=3, parent="cls:best")
    assert [first.version, second.version, third.version] == [1, 2, 3]
    assert store.resolve("cls").version == 3
    assert store.resolve("cls", "latest").version == 3
    assert store.resolve("cls", "best").version == 2
    for spelled in (2, "2", "v2"):
        assert store.resolve("cls", spelled).metrics == {"auc": 0.91}
    assert parse_ref("cls:v2") == ("cls", 2)
    assert parse_ref("cls:best") == ("cls", "best")
    assert parse_ref("cls") == ("cls", "latest")
    assert store.resolve(*parse_ref("cls:v2")).version == 2
    assert third.parent == "cls:v2"  # the alias was resolved at save time
    state, record = store.load_state_dict("cls", "best")
    assert record.version == 2
    assert all(torch.equal(state[k], v) for k, v in second_model.state_dict().items())
    assert [(r.version, r.aliases) for r in store.list("cls")] == [(1, []), (2, ["best"]), (3, ["latest"])]
    # record.json files mirror the index: v2 lost 'latest' when v3 arrived.
    on_disk = json.loads((store.version_dir("cls", 2) / "record.json").read_text())
    assert on_disk["aliases"] == ["best"]
    assert store.verify() == []


def test_set_alias_remove_and_numbers_never_reused(store: ModelStore) -> None:
    for seed in range(3):
        save_bn(store, seed=seed)
    assert store.set_alias("cls", "best", "v1").aliases == ["best"]
    with pytest.raises(RegistryError, match="latest"):
        store.set_alias("cls", "latest", 1)
    removed = store.remove("cls", "latest")
    assert [r.version for r in removed] == [3]
    assert not store.version_dir("cls", 3).exists()
    assert store.resolve("cls").version == 2
    _, fourth = save_bn(store, seed=9)
    assert fourth.version == 4
    store.remove("cls", "best")
    with pytest.raises(RegistryError, match="has no version 'best'"):
        store.resolve("cls", "best")
    assert [r.version for r in store.list("cls")] == [2, 4]
    assert store.verify() == []
    assert len(store.remove("cls")) == 2
    assert store.list() == [] and not (store.root / "cls").exists()
    with pytest.raises(RegistryError, match="no stored model named 'cls'"):
        store.resolve("cls")


def test_tampered_weights_are_refused(store: ModelStore) -> None:
    _, record = save_bn(store, seed=4)
    weights = store.weights_path("cls", record.version)
    payload = bytearray(weights.read_bytes())
    payload[-3] ^= 0xFF  # inside the last tensor's data: still parses, so only the hash can catch it
    weights.write_bytes(bytes(payload))
    assert safetensors.torch.load(bytes(payload))  # the file itself is well-formed
    tampered_hash = hashlib.sha256(payload).hexdigest()
    with pytest.raises(IntegrityError) as caught:
        store.load("cls")
    message = str(caught.value)
    assert str(weights) in message and tampered_hash in message and record.sha256 in message
    assert store.verify() == [f"{weights}: sha256 differs from the record"]


def test_missing_weights_and_bad_config_are_named(store: ModelStore) -> None:
    _, record = save_bn(store, seed=5)
    weights = store.weights_path("cls", record.version)
    weights.unlink()
    with pytest.raises(RegistryError, match=str(weights).replace("\\", "\\\\")):
        store.load_state_dict("cls")
    wide = trained_model(store.registry, "bn-convnet", seed=6)
    store.save(wide, name="mismatch", factory="bn-convnet", task="test", config={"width": 7},
               preprocessing=Preprocessing(16))
    with pytest.raises(RegistryError, match="do not fit 'bn-convnet'"):
        store.load("mismatch")
    with pytest.raises(RegistryError, match="did you mean 'bn-convnet'"):
        store.save(wide, name="x", factory="bn-convnt", task="test", config={}, preprocessing=Preprocessing(16))
    with pytest.raises(RegistryError, match="JSON"):
        store.save(wide, name="x", factory="bn-convnet", task="test", config={"width": object()},
                   preprocessing=Preprocessing(16))
    with pytest.raises(RegistryError, match="not valid"):
        store.save(wide, name="../escape", factory="bn-convnet", task="test", config={},
                   preprocessing=Preprocessing(16))


def test_crashed_save_folder_keeps_its_number(store: ModelStore) -> None:
    save_bn(store, seed=1)
    orphan = store.version_dir("cls", 2)
    orphan.mkdir()  # what a crash between rename and index commit leaves behind
    assert store.verify() == [f"{orphan}: folder not in the index"]
    _, record = save_bn(store, seed=2)
    assert record.version == 3


def test_preprocessing_and_record_validation() -> None:
    pre = Preprocessing(image_size=(224, 224), channels=3, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    assert pre.image_size == [224, 224]
    assert Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    assert (Preprocessing(16, mean=0.5, std=0.25).mean, Preprocessing(16, mean=0.5, std=0.25).std) == ([0.5], [0.25])
    with pytest.raises(RegistryError, match="image_size must be a positive integer"):
        Preprocessing(True)  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="intensity"):
        Preprocessing(16, intensity="sigmoid")
    with pytest.raises(RegistryError, match="length 1 or channels"):
        Preprocessing(16, channels=3, mean=[0.1, 0.2], std=[1.0, 1.0])
    with pytest.raises(RegistryError, match="std values must be > 0"):
        Preprocessing(16, mean=[0.0], std=[0.0])
    with pytest.raises(RegistryError, match="unknown keys \\['size'\\]"):
        Preprocessing.from_dict({"size": 3})
    record = ModelRecord(name="m", version=2, task="t", factory="f", config={"a": [1]}, preprocessing=pre,
                         sha256="ab", aliases=["best"])
    assert ModelRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    described = describe_record(record)
    assert described["ref"] == "m:v2" and described["preprocessing"]["image_size"] == [224, 224]
    json.dumps(described)
    for bad in ("m:v0", "m:", "bad name:1", "m:v2x!"):
        with pytest.raises(RegistryError):
            parse_ref(bad)


def test_default_root_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    assert default_store_root() == tmp_path / "home" / "models"
    monkeypatch.delenv("WORKBENCH_HOME")
    assert default_store_root().parts[-2:] == ("medvl-workbench", "models")


def test_registry_modules_never_import_pickle() -> None:
    modules = ["registry.py", "model_records.py", "model_index.py", "model_files.py", "model_store.py",
               "model_cache.py"]
    for module in modules:
        tree = ast.parse((REPO_ROOT / "workbench" / module).read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"pickle", "cPickle", "dill", "cloudpickle", "joblib"}, module
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "load"
                 and isinstance(node.value, ast.Name) and node.value.id == "torch"]
        assert calls == [], f"{module} calls torch.load"


def test_non_tensor_state_is_refused() -> None:
    with pytest.raises(RegistryError, match="'step' is of type int"):
        state_for_saving({"weight": torch.ones(2), "step": 3})


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from torch import nn
    from workbench.model_store import ModelStore
    from workbench.registry import ModelRegistry

    root, writer, ready, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    registry = ModelRegistry()
    registry.register("mlp", lambda width=8: nn.Sequential(nn.Linear(4, width), nn.Linear(width, 2)), task="test")
    store = ModelStore(root, registry)
    ready.touch()
    while not go.exists():
        time.sleep(0.005)
    for step in range(10):
        time.sleep(0.02)  # a little "training" between saves, so the writers take turns
        seed = 1000 * writer + step
        torch.manual_seed(seed)
        store.save(registry.create_model("mlp", width=8), name="shared", factory="mlp", task="test",
                   config={"width": 8}, preprocessing={"image_size": 4}, extra={"seed": seed, "writer": writer})
    """
)


def test_two_processes_saving_at_once_never_corrupt_the_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    go = tmp_path / "go"
    writers = []
    for writer in (1, 2):
        ready = tmp_path / f"ready{writer}"
        command = [sys.executable, "-c", WRITER, str(root), str(writer), str(ready), str(go)]
        writers.append((subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True), ready))
    while not all(ready.exists() for _, ready in writers):
        assert all(process.poll() is None for process, _ in writers), [p.stderr.read() for p, _ in writers]
        time.sleep(0.01)
    go.touch()  # both processes start saving at the same moment
    for process, _ in writers:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr

    registry = ModelRegistry()
    registry.register("mlp", lambda width=8: nn.Sequential(nn.Linear(4, width), nn.Linear(width, 2)), task="test")
    store = ModelStore(root, registry)
    records = store.list("shared")
    assert [r.version for r in records] == list(range(1, 21))
    expected_seeds = [1000 + step for step in range(10)] + [2000 + step for step in range(10)]
    assert sorted(r.extra["seed"] for r in records) == expected_seeds
    for record in records:
        assert hashlib.sha256(store.weights_path("shared", record.version).read_bytes()).hexdigest() == record.sha256
        state, _ = store.load_state_dict("shared", record.version)
        torch.manual_seed(record.extra["seed"])
        expected = registry.create_model("mlp", width=8).state_dict()
        assert all(torch.equal(state[k], v) for k, v in expected.items()), record.ref
    assert store.resolve("shared").version == 20
    assert store.verify() == []
    with sqlite3.connect(root / "index.sqlite") as conn:
        indexed = sorted(v for (v,) in conn.execute("SELECT version FROM versions WHERE name = 'shared'"))
        (journal_mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    folders = sorted(int(p.name[1:]) for p in (root / "shared").iterdir())
    assert indexed == folders == list(range(1, 21))
    assert journal_mode == "wal"
    assert not any((root / ".staging").iterdir())
