"""Model factories (register/create/list) and placement of shared instances (LRU cache)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from workbench import registry as registry_module
from workbench.errors import RegistryError
from workbench.devices import select_device, select_precision, torch_dtype
from workbench.model_cache import CacheKey, ModelCache, module_bytes
from workbench.model_records import Preprocessing
from workbench.model_store import ModelStore
from workbench.registry import ModelRegistry, PluginModelRegistry


def conv_classifier(width: int = 4, classes: int = 2) -> nn.Module:
    """Conv + BatchNorm classifier: (B, 1, H, W) -> (B, classes)."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes),
    )


def unet_2d(out_channels: int = 2) -> nn.Module:
    """Two-level MONAI UNet: (B, 1, H, W) -> (B, out_channels, H, W)."""
    return UNet(spatial_dims=2, in_channels=1, out_channels=out_channels, channels=(4, 8), strides=(2,))


def text_embedder(vocab: int = 10, dim: int = 4) -> nn.Module:
    """Token embedding: (B, T) ids -> (B, T, dim)."""
    return nn.Embedding(vocab, dim)


# Placement tests run on every device this machine has (CUDA too, where present).
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]

# name -> (factory, task, input, expected output shape): the timm-style "every model builds" table.
MODELS = {
    "conv-classifier": (conv_classifier, "classification", torch.zeros(2, 1, 12, 12), (2, 2)),
    "unet-2d": (unet_2d, "segmentation", torch.zeros(1, 1, 16, 16), (1, 2, 16, 16)),
    "text-embedder": (text_embedder, "text-encoder", torch.zeros(3, 5, dtype=torch.long), (3, 5, 4)),
}


@pytest.fixture()
def registry() -> ModelRegistry:
    models = ModelRegistry()
    for name, (factory, task, _, _) in MODELS.items():
        models.register(name, factory, task=task, plugin="tests")
    return models


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_builds_with_the_expected_output_shape(registry: ModelRegistry, name: str) -> None:
    _, task, example, expected_shape = MODELS[name]
    model = registry.create_model(name).eval()
    with torch.no_grad():
        assert tuple(model(example).shape) == expected_shape
    entry = registry.entry(name)
    assert (entry.task, entry.plugin) == (task, "tests")
    assert entry.description == MODELS[name][0].__doc__.splitlines()[0]


def test_create_model_passes_config(registry: ModelRegistry) -> None:
    model = registry.create_model("conv-classifier", width=6, classes=5)
    assert model[0].out_channels == 6 and model[-1].out_features == 5


def test_duplicate_name_across_plugins_names_both(registry: ModelRegistry) -> None:
    contrastive = PluginModelRegistry(registry, "contrastive")
    grounding = PluginModelRegistry(registry, "grounding")
    contrastive.register("encoder", conv_classifier, task="image-encoder")
    with pytest.raises(RegistryError) as caught:
        grounding.register("encoder", unet_2d, task="image-encoder")
    assert str(caught.value) == "model 'encoder' is registered by plugin 'contrastive' and again by plugin 'grounding'"
    assert registry.entry("encoder").plugin == "contrastive"
    assert registry.unregister_plugin("contrastive") == ["encoder"]
    assert "encoder" not in registry


def test_unknown_name_suggests_close_matches(registry: ModelRegistry) -> None:
    with pytest.raises(RegistryError, match="unknown model 'unet2d'; did you mean 'unet-2d'"):
        registry.create_model("unet2d")
    with pytest.raises(RegistryError, match="unknown model 'zzz' \\(3 models registered"):
        registry.entry("zzz")


def test_list_models_pattern_and_task(registry: ModelRegistry) -> None:
    assert registry.list_models() == ["conv-classifier", "text-embedder", "unet-2d"]
    assert registry.list_models("*-2d") == ["unet-2d"]
    assert registry.list_models(task="segmentation") == ["unet-2d"]
    assert registry.list_models("c*", task="segmentation") == []


def test_invalid_registrations_are_refused(registry: ModelRegistry) -> None:
    with pytest.raises(RegistryError, match="not callable"):
        registry.register("x", "not a factory", task="t")  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="not valid"):
        registry.register("a:b", conv_classifier, task="t")
    registry.register("returns-tensor", lambda: torch.zeros(1), task="t")
    with pytest.raises(RegistryError, match="returned Tensor, not nn.Module"):
        registry.create_model("returns-tensor")


def test_default_registry_decorator_and_module_verbs() -> None:
    fresh = registry_module.reset_registry()
    try:
        assert registry_module.get_registry() is fresh

        @registry_module.register_model("default-conv", task="classification")
        def default_conv(width: int = 3) -> nn.Module:
            """Default-registry test model."""
            return conv_classifier(width=width)

        assert registry_module.list_models("default-*") == ["default-conv"]
        assert registry_module.create_model("default-conv", width=7)[0].out_channels == 7
        assert fresh.entry("default-conv").description == "Default-registry test model."
        with pytest.raises(RegistryError, match="by plugin 'workbench' and again by plugin 'other'"):
            registry_module.register_model("default-conv", task="x", plugin="other")(default_conv)
    finally:
        assert registry_module.reset_registry().list_models() == []


def test_store_names_are_importable_from_the_registry_module() -> None:
    from workbench.registry import ModelStore as ReExported
    from workbench.registry import describe_record, parse_ref

    assert ReExported is ModelStore and parse_ref("m:v4") == ("m", 4) and callable(describe_record)
    with pytest.raises(AttributeError):
        registry_module.NoSuchName  # noqa: B018


def fill_store(root: Path, registry: ModelRegistry, names: list[str]) -> ModelStore:
    store = ModelStore(root, registry, memory_budget_bytes=None)
    for index, name in enumerate(names):
        torch.manual_seed(index)
        store.save(registry.create_model("conv-classifier", width=8), name=name, factory="conv-classifier",
                   task="classification", config={"width": 8}, preprocessing=Preprocessing(12))
    return store


@pytest.mark.parametrize("device", DEVICES)
def test_lru_evicts_least_recently_used_within_budget(tmp_path: Path, registry: ModelRegistry, device: str) -> None:
    store = fill_store(tmp_path / "store", registry, ["a", "b", "c"])
    one_model = module_bytes(registry.create_model("conv-classifier", width=8))
    cache = ModelCache(store, memory_budget_bytes=2 * one_model + one_model // 2)
    first_a = cache.get("a", device=device, precision="fp32")
    placed_on = str(next(first_a.parameters()).device)
    cache.get("b", device=device, precision="fp32")
    assert cache.get("a", device=device, precision="fp32") is first_a  # shared; 'a' is now most recent
    cache.get("c", device=device, precision="fp32")
    assert cache.keys() == [CacheKey("a", 1, placed_on, "fp32"), CacheKey("c", 1, placed_on, "fp32")]
    assert cache.bytes_held(placed_on) == 2 * one_model
    second_b = cache.get("b", device=device, precision="fp32")  # rebuilt: evicts 'a', now least recent
    assert [k.name for k in cache.keys()] == ["c", "b"]
    assert second_b is cache.get("b", device=device, precision="fp32")
    assert all(not module.training for module in second_b.modules())


@pytest.mark.parametrize("device", DEVICES)
def test_auto_precision_and_dtype_follow_the_device(tmp_path: Path, registry: ModelRegistry, device: str) -> None:
    store = fill_store(tmp_path / "store", registry, ["a"])
    expected = select_precision(select_device(device), "auto")
    model = store.get("a", device=device)
    assert [k.precision for k in store.cache.keys()] == [expected]
    assert {p.dtype for p in model.parameters()} == {torch_dtype(expected)}
    assert store.get("a", device=device) is model


def test_placed_instance_matches_stored_weights_and_follows_precision(tmp_path: Path, registry: ModelRegistry) -> None:
    store = fill_store(tmp_path / "store", registry, ["a"])
    loaded, _ = store.load("a")
    shared = store.get("a", device="cpu")  # auto precision on the CPU: fp32
    assert store.cache.keys() == [CacheKey("a", 1, "cpu", "fp32")]
    example = torch.linspace(0, 1, 2 * 144).reshape(2, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(shared(example), loaded.eval()(example))
    half = store.get("a", device="cpu", precision="bf16")
    assert half is not shared and half is store.get("a", device="cpu", precision="bf16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half[1].num_batches_tracked.dtype == torch.long  # integer buffers keep their type
    assert module_bytes(half) < module_bytes(shared)
    assert shared[0].weight.dtype == torch.float32


def test_get_follows_latest_and_remove_drops_instances(tmp_path: Path, registry: ModelRegistry) -> None:
    store = fill_store(tmp_path / "store", registry, ["a"])
    first = store.get("a", device="cpu")
    store.save(registry.create_model("conv-classifier", width=8), name="a", factory="conv-classifier",
               task="classification", config={"width": 8}, preprocessing=Preprocessing(12))
    second = store.get("a", device="cpu")
    assert second is not first and store.get("a", 1, device="cpu") is first
    store.remove("a", 1)
    assert [k.version for k in store.cache.keys()] == [2]


def test_unlimited_budget_and_oversized_model(tmp_path: Path, registry: ModelRegistry,
                                              caplog: pytest.LogCaptureFixture) -> None:
    store = fill_store(tmp_path / "store", registry, ["a", "b", "c"])
    unlimited = ModelCache(store, memory_budget_bytes="auto")  # CPU has no automatic budget
    for name in "abc":
        unlimited.get(name, device="cpu")
    assert len(unlimited) == 3
    tiny = ModelCache(store, memory_budget_bytes=16)
    with caplog.at_level(logging.WARNING, logger="workbench.model_cache"):
        tiny.get("a", device="cpu")
        tiny.get("b", device="cpu")
    assert [k.name for k in tiny.keys()] == ["b"]  # each is held alone, the older one evicted
    assert "more than the 16-byte budget" in caplog.text


def test_dual_encoder_protocols_name_what_a_model_lacks():
    from workbench.dual_encoder import DualEncoder, ImageTokenEncoder, PatchDualEncoder, missing_methods, protocol_methods

    assert protocol_methods(DualEncoder) == ("encode_image", "encode_text", "image_features", "tokenize")
    assert protocol_methods(PatchDualEncoder) == ("encode_image", "encode_text", "image_features", "patch_grid", "project_patch_tokens", "tokenize")
    assert protocol_methods(ImageTokenEncoder) == ("image_features", "patch_grid")
    linear = torch.nn.Linear(2, 2)
    assert missing_methods(linear, ImageTokenEncoder) == ["image_features", "patch_grid"]
    assert not isinstance(linear, DualEncoder)
