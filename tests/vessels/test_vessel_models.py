"""Vessel networks by name, their MONAI bundle definitions, and the SCOPE-style graph head."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import sliding_window_inference

from workbench.errors import ConfigError
from workbench.registry import ModelRegistry, PluginModelRegistry
from workbench_plugins.vessels.graph_head import GraphHeadNet, grid_adjacency
from workbench_plugins.vessels.models import MODEL_NAMES, network_definition, register_vessel_models

GRAPH = {"features": 16, "grid": 16, "hidden": 32, "layers": 2}


@pytest.fixture(scope="module")
def registry() -> PluginModelRegistry:
    view = PluginModelRegistry(ModelRegistry(), "vessels")
    register_vessel_models(view)
    return view


def test_names_are_registered_for_segmentation_by_the_plugin(registry: PluginModelRegistry) -> None:
    assert registry.list_models("vessel-*", task="segmentation") == sorted(MODEL_NAMES)
    assert sorted(MODEL_NAMES) == ["vessel-attention-unet", "vessel-dynunet", "vessel-unet"]
    assert all(registry.entry(name).plugin == "vessels" and "MONAI" in registry.entry(name).description for name in MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("out_channels", [1, 2])
def test_forward_gives_logits_of_the_input_size(registry: PluginModelRegistry, name: str, out_channels: int) -> None:
    torch.manual_seed(0)
    model = registry.create_model(name, out_channels=out_channels).eval()
    assert model.size_divisor == 16
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 48))
    assert logits.shape == (2, out_channels, 64, 48) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_size_the_strides_cannot_divide_is_named(registry: PluginModelRegistry, name: str) -> None:
    model = registry.create_model(name)
    with pytest.raises(ConfigError, match=r"input size 60x64 \(HxW\).*divisible by 16"):
        model(torch.randn(1, 3, 60, 64))
    with pytest.raises(ConfigError, match="2-D images"):
        model(torch.randn(3, 64, 64))


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("graph_head", [None, GRAPH, {"tile": 8}], ids=["plain", "graph-head", "graph-head-tile"])
def test_bundle_definition_builds_the_same_network(registry: PluginModelRegistry, name: str, graph_head: dict | None) -> None:
    config = {"out_channels": 1} if graph_head is None else {"graph_head": graph_head}
    torch.manual_seed(0)
    ours = registry.create_model(name, **config).eval()
    definition = json.loads(json.dumps(network_definition(name, config)))  # what a bundle's inference.json holds
    built = ConfigParser({"network_def": definition}).get_parsed_content("network_def").eval()
    expected_target = "workbench_plugins.vessels.graph_head.GraphHeadNet" if graph_head else "monai.networks.nets."
    assert definition["_target_"].startswith(expected_target)
    if graph_head is None:  # a plain network is the MONAI class itself: a bundle needs no workbench code
        assert type(built).__module__.startswith("monai.networks.nets")
    ours_state, built_state = ours.state_dict(), built.state_dict()
    assert list(ours_state) == list(built_state)
    assert all(ours_state[key].shape == built_state[key].shape for key in ours_state)
    built.load_state_dict(ours_state)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(images), built(images), atol=1e-6)


def test_default_unet_has_no_one_channel_bottleneck(registry: PluginModelRegistry) -> None:
    # MONAI's UNet with residual units normalises the top level at out_channels width (see models.py)
    def narrowest_norm(model: torch.nn.Module) -> int:
        return min(m.num_features for m in model.modules() if isinstance(m, torch.nn.InstanceNorm2d))

    assert narrowest_norm(registry.create_model("vessel-unet")) == 16
    assert narrowest_norm(registry.create_model("vessel-unet", num_res_units=2)) == 1


def test_bad_configs_are_named() -> None:
    with pytest.raises(ConfigError, match="unknown vessel model 'vessel-segformer'"):
        network_definition("vessel-segformer", {})
    with pytest.raises(ConfigError, match="vessel-unet: bad config.*accepted keys"):
        network_definition("vessel-unet", {"chanels": [8, 16]})
    with pytest.raises(ConfigError, match=r"unknown graph_head key\(s\) \['nodes'\]"):
        network_definition("vessel-dynunet", {"graph_head": {"nodes": 8}})
    with pytest.raises(ConfigError, match="strides needs len"):
        network_definition("vessel-attention-unet", {"channels": [8, 16, 32], "strides": [2]})


def test_graph_head_forward_aux_outputs_and_parameters(registry: PluginModelRegistry) -> None:
    torch.manual_seed(0)
    plain = registry.create_model("vessel-unet")
    model = registry.create_model("vessel-unet", graph_head=GRAPH)
    assert isinstance(model, GraphHeadNet) and model.size_divisor == 16 and model.has_graph_head
    images = torch.randn(2, 3, 64, 64)
    outputs = model(images, return_aux=True)
    assert outputs["logits"].shape == (2, 1, 64, 64)
    assert outputs["node_logits"].shape == (2, 1, 16, 16)
    assert outputs["node_features"].shape == (2, 32, 16, 16)
    assert torch.equal(model(images), outputs["logits"])
    head_parameters = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    # node_in (2F*h + h) + 2 graph layers (h*h + h + 2h each) + classifier (h + 1) + fuse ((F + h + 1) + 1)
    F_, h = GRAPH["features"], GRAPH["hidden"]
    assert head_parameters == (2 * F_ * h + h) + 2 * (h * h + h + 2 * h) + (h + 1) + (F_ + h + 1 + 1)
    assert model.backbone(images).shape == (2, GRAPH["features"], 64, 64)  # the MONAI network gives F features
    assert len(plain.state_dict()) == len(model.backbone.state_dict())
    outputs["logits"].mean().backward()
    assert all(p.grad is not None for p in model.parameters())  # every parameter is on the logits' path (DDP-safe)
    # the blockwise fusion is one 1x1 convolution over concat(CNN features, nearest-upsampled node features and logits)
    with torch.no_grad():
        nodes = torch.cat([outputs["node_features"], outputs["node_logits"]], 1)
        upsampled = torch.nn.functional.interpolate(nodes, size=(64, 64), mode="nearest")
        weight = torch.cat([model.fuse_pixels.weight, model.fuse_nodes.weight], 1)
        fused = torch.nn.functional.conv2d(torch.cat([model.backbone(images), upsampled], 1), weight, model.fuse_pixels.bias)
        assert torch.allclose(fused, outputs["logits"], atol=1e-5)
    with pytest.raises(ConfigError, match="divisible by 48"):
        registry.create_model("vessel-unet", graph_head={**GRAPH, "grid": 12})(torch.randn(1, 3, 64, 64))


def test_graph_head_with_a_tile_size_follows_the_input(registry: PluginModelRegistry) -> None:
    model = registry.create_model("vessel-unet", graph_head={"tile": 8, "hidden": 16})
    assert model.size_divisor == 16
    for height, width in ((64, 64), (64, 48), (32, 96)):
        outputs = model(torch.randn(1, 3, height, width), return_aux=True)
        assert outputs["node_logits"].shape == (1, 1, height // 8, width // 8)
        assert outputs["logits"].shape == (1, 1, height, width)
    assert grid_adjacency(2, 3).shape == (6, 6)
    assert (grid_adjacency(2, 3).to_dense() > 0).sum().item() == 4 * 4 + 2 * 6  # corners see 4, middle column 6
    with pytest.raises(ConfigError, match="exactly one of grid"):
        registry.create_model("vessel-unet", graph_head={"tile": 8, "grid": 16})


def test_graph_head_runs_under_bf16_autocast(registry: PluginModelRegistry) -> None:
    model = registry.create_model("vessel-unet", graph_head={**GRAPH, "grid": 8})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(torch.randn(1, 3, 32, 32), return_aux=True)
    assert outputs["node_logits"].dtype == torch.float32  # the graph runs in fp32 (sparse kernels)
    assert torch.isfinite(outputs["logits"].float()).all() and outputs["logits"].shape == (1, 1, 32, 32)
    placed = model.to(torch.bfloat16).eval()  # as the model cache places a model in reduced precision
    with torch.no_grad():
        logits = placed(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_graph_head_nodes_mix_only_with_their_eight_neighbours() -> None:
    adjacency = grid_adjacency(4)
    assert grid_adjacency(4) is adjacency  # built once per grid size, cached
    dense = adjacency.to_dense()
    assert dense.shape == (16, 16) and torch.allclose(dense, dense.T)
    degree = (dense > 0).sum(1)  # self + 8 neighbours inside, + 5 on an edge, + 3 at a corner
    assert degree[0].item() == 4 and degree[1].item() == 6 and degree[5].item() == 9
    assert dense[0, 10] == 0  # tile (0, 0) and tile (2, 2) are not neighbours
    assert dense[0, 5].item() == pytest.approx(1 / (4 * 9) ** 0.5)
    # a change in one tile's feature moves only its neighbours' node features after one layer
    torch.manual_seed(0)
    model = GraphHeadNet(torch.nn.Identity(), features=3, out_channels=1, grid=4, hidden=8, layers=1)
    nodes = torch.randn(1, 16, 8)
    moved = nodes.clone()
    moved[0, 0, 0] += 1.0  # one feature (a shift of all of them would vanish in the LayerNorm)
    change = (model.graph_layers[0](moved, adjacency) - model.graph_layers[0](nodes, adjacency)).abs().sum(-1)[0]
    assert set(torch.nonzero(change > 1e-6).flatten().tolist()) == {0, 1, 4, 5}


@pytest.mark.parametrize("graph_head", [None, GRAPH], ids=["plain", "graph-head"])
def test_sliding_window_inference_on_a_whole_image(registry: PluginModelRegistry, graph_head: dict | None) -> None:
    model = registry.create_model("vessel-unet", graph_head=graph_head).eval()
    with torch.no_grad():
        logits = sliding_window_inference(torch.randn(1, 3, 100, 90), roi_size=(64, 64), sw_batch_size=4, predictor=model,
                                          overlap=0.25)
    assert logits.shape == (1, 1, 100, 90) and torch.isfinite(logits).all()
