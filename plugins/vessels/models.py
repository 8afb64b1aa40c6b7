"""The vessels plugin's networks: MONAI UNet, DynUNet and AttentionUnet for 2-D vessel patches, by name.

Registered names (task ``"segmentation"``), each built by ``registry.create_model(name, **config)``:

- ``vessel-unet``: ``monai.networks.nets.UNet``, channels (16, 32, 64, 128, 256), strides (2, 2, 2, 2),
  instance norm, ``num_res_units=0`` by default. Why not residual units: with them MONAI's UNet ends in a
  transposed conv to ``out_channels`` followed by instance norm + PReLU and a residual unit at that width,
  so a one-channel output squeezes the whole top level through one normalised channel. On fundus-phantom
  patches (64 px, batch 8, Adam 2e-3, Dice + CE, 150 steps, CPU) held-out Dice was 0.76 with 2 residual
  units and 0.86 without, at 2.6x less time per step. ``num_res_units=2`` is still accepted;
- ``vessel-dynunet``: ``monai.networks.nets.DynUNet`` (nnU-Net style), filters (16, 32, 64, 128, 256),
  kernels 3, strides (1, 2, 2, 2, 2), residual blocks, no deep supervision (so ``forward`` returns one tensor);
- ``vessel-attention-unet``: ``monai.networks.nets.AttentionUnet``, channels (16, 32, 64, 128, 256), strides (2, 2, 2, 2).

Every one takes ``in_channels=3`` (RGB fundus), ``out_channels=1`` (1: sigmoid; >= 2: softmax over classes)
and ``graph_head=None``; a dict (keys ``features`` 16, ``grid`` 16 or ``tile`` (pixels), ``hidden`` 64, ``layers`` 2)
wraps the network in the SCOPE-style :class:`~workbench_plugins.vessels.graph_head.GraphHeadNet` (its docstring
says when to prefer ``tile``). ``forward(x)`` returns logits
``(B, out_channels, H, W)``, so MONAI ``sliding_window_inference`` works on whole images.

Input size: each stride-2 level halves the image, so H and W must be divisible by the product of the
strides (16 for the defaults; the graph head also needs its ``grid``). A model checks this and raises a
ConfigError naming the size; ``model.size_divisor`` holds the number, for padding or choosing a ``roi_size``.

The registry builds small subclasses of the MONAI networks that only add that check; they have the
same parameters, so :func:`network_definition` can name the MONAI class itself in a bundle config.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from monai.networks.nets import AttentionUnet, DynUNet, UNet
from torch import nn

from workbench.errors import ConfigError
from workbench_plugins.vessels.graph_head import GraphHeadNet

__all__ = ["MODEL_NAMES", "register_vessel_models", "network_definition", "build_network", "VesselUNet", "VesselDynUNet",
           "VesselAttentionUnet"]

GRAPH_HEAD_TARGET = "workbench_plugins.vessels.graph_head.GraphHeadNet"
GRAPH_HEAD_DEFAULTS: dict[str, int | None] = {"features": 16, "grid": 16, "hidden": 64, "layers": 2, "tile": None}


def _stride_divisor(strides: Any) -> int:
    """Product of 2-D strides (ints or per-axis pairs): what H and W must be divisible by."""
    divisor = 1
    for stride in strides:
        per_axis = [stride, stride] if isinstance(stride, int) else list(stride)
        divisor *= math.lcm(*(int(value) for value in per_axis))
    return divisor


class _SizeChecked:
    """Mixin: ``forward`` raises ConfigError for an input MONAI's network would fail on obscurely."""

    size_divisor: int
    model_name: str = "network"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, H, W)`` for images ``(B, in_channels, H, W)``; H, W divisible by ``size_divisor``."""
        if x.ndim != 4:
            raise ConfigError(f"{self.model_name} takes 2-D images (B, C, H, W), got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % self.size_divisor or width % self.size_divisor:
            raise ConfigError(
                f"input size {height}x{width} (HxW): {self.model_name} needs height and width divisible by {self.size_divisor} "
                f"(the product of its strides); pad the image or use sliding-window inference with a roi_size that is a "
                f"multiple of {self.size_divisor}, e.g. {4 * self.size_divisor}"
            )
        return super().forward(x)  # type: ignore[misc]


class VesselUNet(_SizeChecked, UNet):
    """``monai.networks.nets.UNet`` with an input-size check (same parameters and state_dict)."""

    model_name = "vessel-unet"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size_divisor = _stride_divisor(kwargs["strides"])


class VesselDynUNet(_SizeChecked, DynUNet):
    """``monai.networks.nets.DynUNet`` with an input-size check (same parameters and state_dict)."""

    model_name = "vessel-dynunet"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size_divisor = _stride_divisor(kwargs["strides"])


class VesselAttentionUnet(_SizeChecked, AttentionUnet):
    """``monai.networks.nets.AttentionUnet`` with an input-size check (same parameters and state_dict)."""

    model_name = "vessel-attention-unet"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size_divisor = _stride_divisor(kwargs["strides"])


_CHECKED_CLASSES: dict[str, type[nn.Module]] = {
    "monai.networks.nets.UNet": VesselUNet,
    "monai.networks.nets.DynUNet": VesselDynUNet,
    "monai.networks.nets.AttentionUnet": VesselAttentionUnet,
}


def _positive_ints(name: str, key: str, values: Any) -> list[Any]:
    items = list(values)
    flat = [v for item in items for v in (item if isinstance(item, (list, tuple)) else [item])]
    if not items or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in flat):
        raise ConfigError(f"{name}: {key} must be a non-empty list of positive integers, got {values!r}")
    return [list(item) if isinstance(item, (list, tuple)) else item for item in items]


def _with_graph_head(name: str, network: dict[str, Any], out_channels: int, graph_head: dict[str, Any] | None) -> dict[str, Any]:
    """Wrap a MONAI network definition in the graph head's, or return it as it is when ``graph_head`` is None."""
    if graph_head is None:
        return network
    if not isinstance(graph_head, dict):
        raise ConfigError(f"{name}: graph_head must be a mapping (keys {sorted(GRAPH_HEAD_DEFAULTS)}) or null, got {graph_head!r}")
    unknown = sorted(set(graph_head) - set(GRAPH_HEAD_DEFAULTS))
    if unknown:
        raise ConfigError(f"{name}: unknown graph_head key(s) {unknown}; known: {sorted(GRAPH_HEAD_DEFAULTS)}")
    head = {**GRAPH_HEAD_DEFAULTS, **graph_head}
    if graph_head.get("tile") is not None and "grid" not in graph_head:
        head["grid"] = None  # a tile size replaces the default grid
    backbone = {**network, "out_channels": head["features"]}
    return {"_target_": GRAPH_HEAD_TARGET, "backbone": backbone, "out_channels": out_channels, **head,
            "size_divisor": _stride_divisor(network["strides"])}


def unet_definition(in_channels: int = 3, out_channels: int = 1, channels: Any = (16, 32, 64, 128, 256),
                    strides: Any = (2, 2, 2, 2), num_res_units: int = 0, norm: str = "INSTANCE", act: str = "PRELU",
                    dropout: float = 0.0, graph_head: dict[str, Any] | None = None) -> dict[str, Any]:
    """The bundle definition of ``vessel-unet``: ``{"_target_": "monai.networks.nets.UNet", ...}`` (JSON-ready)."""
    channels, strides = _positive_ints("vessel-unet", "channels", channels), _positive_ints("vessel-unet", "strides", strides)
    if len(strides) != len(channels) - 1:
        raise ConfigError(f"vessel-unet: strides needs len(channels) - 1 = {len(channels) - 1} entries, got {len(strides)}")
    network = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": in_channels, "out_channels": out_channels,
               "channels": channels, "strides": strides, "num_res_units": num_res_units, "norm": norm, "act": act,
               "dropout": float(dropout)}
    return _with_graph_head("vessel-unet", network, out_channels, graph_head)


def dynunet_definition(in_channels: int = 3, out_channels: int = 1, filters: Any = (16, 32, 64, 128, 256),
                       kernel_size: Any = (3, 3, 3, 3, 3), strides: Any = (1, 2, 2, 2, 2), res_block: bool = True,
                       norm_name: Any = ("INSTANCE", {"affine": True}), dropout: float | None = None,
                       graph_head: dict[str, Any] | None = None) -> dict[str, Any]:
    """The bundle definition of ``vessel-dynunet`` (``monai.networks.nets.DynUNet``; upsampling kernels = strides[1:])."""
    filters, strides = _positive_ints("vessel-dynunet", "filters", filters), _positive_ints("vessel-dynunet", "strides", strides)
    kernel_size = _positive_ints("vessel-dynunet", "kernel_size", kernel_size)
    if not len(filters) == len(strides) == len(kernel_size):
        raise ConfigError(f"vessel-dynunet: filters, kernel_size and strides need one entry per level, got "
                          f"{len(filters)}, {len(kernel_size)} and {len(strides)}")
    norm = [norm_name[0], dict(norm_name[1])] if isinstance(norm_name, (list, tuple)) else norm_name
    network = {"_target_": "monai.networks.nets.DynUNet", "spatial_dims": 2, "in_channels": in_channels,
               "out_channels": out_channels, "kernel_size": kernel_size, "strides": strides, "upsample_kernel_size": strides[1:],
               "filters": filters, "norm_name": norm, "res_block": bool(res_block), "dropout": dropout}
    return _with_graph_head("vessel-dynunet", network, out_channels, graph_head)


def attention_unet_definition(in_channels: int = 3, out_channels: int = 1, channels: Any = (16, 32, 64, 128, 256),
                              strides: Any = (2, 2, 2, 2), dropout: float = 0.0,
                              graph_head: dict[str, Any] | None = None) -> dict[str, Any]:
    """The bundle definition of ``vessel-attention-unet`` (``monai.networks.nets.AttentionUnet``)."""
    name = "vessel-attention-unet"
    channels, strides = _positive_ints(name, "channels", channels), _positive_ints(name, "strides", strides)
    if len(strides) != len(channels) - 1:
        raise ConfigError(f"{name}: strides needs len(channels) - 1 = {len(channels) - 1} entries, got {len(strides)}")
    network = {"_target_": "monai.networks.nets.AttentionUnet", "spatial_dims": 2, "in_channels": in_channels,
               "out_channels": out_channels, "channels": channels, "strides": strides, "dropout": float(dropout)}
    return _with_graph_head(name, network, out_channels, graph_head)


_DEFINITIONS: dict[str, tuple[Callable[..., dict[str, Any]], str]] = {
    "vessel-unet": (unet_definition, "MONAI UNet for 2-D vessel patches (optional SCOPE graph head)"),
    "vessel-dynunet": (dynunet_definition, "MONAI DynUNet (nnU-Net style) for 2-D vessel patches (optional SCOPE graph head)"),
    "vessel-attention-unet": (attention_unet_definition, "MONAI AttentionUnet for 2-D vessel patches (optional SCOPE graph head)"),
}
MODEL_NAMES: tuple[str, ...] = tuple(_DEFINITIONS)


def network_definition(name: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The MONAI bundle ``network_def`` for a registered vessel model and its config.

    ``monai.bundle.ConfigParser({"network_def": d}).get_parsed_content("network_def")`` builds a module
    whose state_dict has the same keys and shapes as ``registry.create_model(name, **config)``. Plain
    networks name the MONAI class (``monai.networks.nets.UNet``...), so a bundle needs no workbench code;
    a graph head names :class:`~workbench_plugins.vessels.graph_head.GraphHeadNet` with the MONAI backbone nested.

    Args:
        name: one of :data:`MODEL_NAMES`.
        config: the factory keyword arguments (may be empty or None).

    Returns:
        A JSON-serialisable dict with ``"_target_"``.

    Raises:
        ConfigError: unknown name, unknown config key or a bad value.
    """
    if name not in _DEFINITIONS:
        raise ConfigError(f"unknown vessel model {name!r}; known: {', '.join(MODEL_NAMES)}")
    definition_fn = _DEFINITIONS[name][0]
    try:
        return definition_fn(**(config or {}))
    except TypeError as error:  # an unknown keyword: name it and the accepted ones
        import inspect

        accepted = sorted(inspect.signature(definition_fn).parameters)
        raise ConfigError(f"{name}: bad config {sorted(config or {})}: {error}; accepted keys: {accepted}") from None


def build_network(definition: dict[str, Any]) -> nn.Module:
    """Build the module a definition from :func:`network_definition` describes, with the input-size check.

    Args:
        definition: a dict with ``"_target_"`` (a MONAI UNet/DynUNet/AttentionUnet or the graph head).

    Returns:
        The ``nn.Module`` (train mode): ``VesselUNet``/``VesselDynUNet``/``VesselAttentionUnet`` or ``GraphHeadNet``.

    Raises:
        ConfigError: an unknown ``_target_``.
    """
    kwargs = {key: value for key, value in definition.items() if key != "_target_"}
    target = definition.get("_target_")
    if target == GRAPH_HEAD_TARGET:
        kwargs["backbone"] = build_network(kwargs["backbone"])
        return GraphHeadNet(**kwargs)
    if target not in _CHECKED_CLASSES:
        raise ConfigError(f"cannot build network {target!r}; known: {sorted(_CHECKED_CLASSES) + [GRAPH_HEAD_TARGET]}")
    if isinstance(kwargs.get("norm_name"), list):
        kwargs["norm_name"] = tuple(kwargs["norm_name"])
    return _CHECKED_CLASSES[target](**kwargs)


def _factory(name: str) -> Callable[..., nn.Module]:
    definition_fn = _DEFINITIONS[name][0]

    def factory(**config: Any) -> nn.Module:
        return build_network(network_definition(name, config))

    factory.__name__ = name.replace("-", "_")
    factory.__doc__ = f"Build ``{name}``; keyword config as in :func:`{definition_fn.__name__}`. Returns the nn.Module."
    factory.__wrapped__ = definition_fn  # type: ignore[attr-defined]  # inspect.signature shows the config keys
    return factory


def register_vessel_models(registry: Any) -> None:
    """Register ``vessel-unet``, ``vessel-dynunet`` and ``vessel-attention-unet`` (task ``"segmentation"``).

    Args:
        registry: a :class:`workbench.registry.PluginModelRegistry` (anything with
            ``register(name, factory, task=..., description=...)``).
    """
    for name, (_, description) in _DEFINITIONS.items():
        registry.register(name, _factory(name), task="segmentation", description=description)
