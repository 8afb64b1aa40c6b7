"""A SCOPE-style graph connectivity head on top of any 2-D segmentation backbone.

SCOPE (Yeganeh et al., "SCOPE: Structural Continuity Preservation for Medical Image Segmentation",
arXiv 2304.14572) tiles the image into an ``n x n`` grid, makes one graph node per tile joined to its
8 neighbours, classifies each node vessel/background with a graph convolution network and maps the node
labels back to pixels; it is trained with clDice. The paper publishes no code and leaves the fusion of
graph and CNN features open, so this module is our own design, written from the paper's description:

1. The backbone (a MONAI network built with ``out_channels=features``) gives a feature map ``(B, F, H, W)``.
2. Node features: the map is pooled over each tile (average and max pooling, concatenated, so a
   thin vessel crossing a tile is not averaged away), then projected to ``hidden`` dimensions.
3. ``layers`` graph convolutions (Kipf and Welling), each ``h <- h + GELU(Linear(A_hat h))`` with
   ``A_hat = D^-1/2 (A + I) D^-1/2`` the normalised 8-neighbour adjacency as a ``torch.sparse`` matrix,
   built once per grid size and device and cached. Residual so extra layers cannot wash features out.
4. Node logits ``(B, C, n, n)``: is there vessel in the tile (trained against the max-pooled label).
5. Fusion: node features and node logits are upsampled (nearest, so each pixel gets its tile's values,
   as SCOPE maps node labels to pixels), concatenated with the CNN features and a 1x1 convolution gives
   the pixel logits ``(B, C, H, W)`` (computed blockwise, see ``__init__``). The node logits feed the
   fusion, so every parameter lies on the path to the pixel logits (DDP needs no ``find_unused_parameters``).

Grid or tile size: with ``grid=n`` every input is cut into ``n x n`` tiles, so the tile size follows the
input (a model trained on 96 px patches with ``grid=16`` sees 6 px tiles, and 12 px tiles if inference runs
on 192 px windows: keep the inference ``roi_size`` equal to the training patch size). With ``tile=t``
(and ``grid=None``) tiles are always ``t x t`` pixels and the grid is ``H/t x W/t``, so training patches and
inference windows may differ. The input height and width must be divisible by ``grid`` (or ``tile``) so the
tiles are whole pixels (node ``(i, j)`` and the pixels it is upsampled to cover the same rectangle), and by
the backbone's own divisor.
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import ConfigError

__all__ = ["GraphHeadNet", "grid_adjacency", "node_targets"]

_ADJACENCY_CACHE: dict[tuple[int, int, str], torch.Tensor] = {}
_ADJACENCY_LOCK = threading.Lock()


def _build_adjacency(rows: int, cols: int) -> torch.Tensor:
    row, col = (index.reshape(-1) for index in torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"))
    sources, targets = [], []
    for d_row in (-1, 0, 1):
        for d_col in (-1, 0, 1):  # (0, 0) is the self loop of A + I
            other_row, other_col = row + d_row, col + d_col
            inside = (other_row >= 0) & (other_row < rows) & (other_col >= 0) & (other_col < cols)
            sources.append((row * cols + col)[inside])
            targets.append((other_row * cols + other_col)[inside])
    source, target = torch.cat(sources), torch.cat(targets)
    degree = torch.bincount(source, minlength=rows * cols).to(torch.float32)
    values = degree[source].rsqrt() * degree[target].rsqrt()
    return torch.sparse_coo_tensor(torch.stack([source, target]), values, (rows * cols, rows * cols),
                                   check_invariants=True).coalesce()


def grid_adjacency(rows: int, cols: int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """The normalised adjacency of a ``rows x cols`` tile graph with 8-neighbour edges and self loops.

    Node ``i * cols + j`` is tile ``(i, j)``. The matrix is ``D^-1/2 (A + I) D^-1/2``, built once per
    ``(rows, cols, device)`` and cached (the same tensor object is returned on later calls).

    Args:
        rows: tiles down, >= 1.
        cols: tiles across (default: ``rows``).
        device: where the matrix lives.

    Returns:
        A coalesced sparse COO float32 tensor ``(rows * cols, rows * cols)``.
    """
    cols = rows if cols is None else cols
    device = torch.device(device)
    key = (int(rows), int(cols), str(device))
    with _ADJACENCY_LOCK:
        cached = _ADJACENCY_CACHE.get(key)
        if cached is None:
            cpu = _ADJACENCY_CACHE.get((key[0], key[1], "cpu"))
            if cpu is None:
                cpu = _ADJACENCY_CACHE[(key[0], key[1], "cpu")] = _build_adjacency(key[0], key[1])
            cached = _ADJACENCY_CACHE[key] = cpu.to(device)
        return cached


def node_targets(target: torch.Tensor, grid: int | tuple[int, int]) -> torch.Tensor:
    """Tile labels for the node classifier: a tile is positive for a class if any of its pixels is.

    Args:
        target: ``(B, C, H, W)`` binary (one channel per class, one-hot for softmax outputs).
        grid: tiles per side, or ``(rows, cols)``.

    Returns:
        ``(B, C, rows, cols)`` float {0, 1}, the max-pool of ``target`` over each tile.
    """
    size = (grid, grid) if isinstance(grid, int) else tuple(grid)
    return F.adaptive_max_pool2d(target.float(), size)


class GraphConvolution(nn.Module):
    """One residual graph convolution ``h + GELU(Linear(A_hat h))`` on a batch of node features.

    Args:
        channels: node feature size ``D``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, channels)
        self.norm = nn.LayerNorm(channels)

    def forward(self, nodes: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """Args: nodes ``(B, N, D)``, adjacency sparse ``(N, N)``. Returns ``(B, N, D)``."""
        batch, count, channels = nodes.shape
        # torch.sparse.mm takes one dense matrix: fold the batch into columns, (N, B*D).
        stacked = nodes.transpose(0, 1).reshape(count, batch * channels)
        # fp32 product: sparse kernels for reduced precision are missing on some devices (a model placed in bf16).
        mixed = torch.sparse.mm(adjacency, stacked.float()).to(nodes.dtype).reshape(count, batch, channels).transpose(0, 1)
        return nodes + F.gelu(self.linear(self.norm(mixed)))


class GraphHeadNet(nn.Module):
    """A backbone's feature map refined by a tile graph (SCOPE-style; our own design, see the module docstring).

    Args:
        backbone: a 2-D network mapping ``(B, C_in, H, W)`` to features ``(B, features, H, W)``.
        features: the backbone's output channels ``F``.
        out_channels: pixel and node classes ``C`` (1: sigmoid, >= 2: softmax).
        grid: tiles per side ``n`` (nodes ``n * n`` whatever the input size), or None when ``tile`` is given.
        hidden: node feature size.
        layers: graph convolution layers (2-3 in SCOPE's spirit).
        size_divisor: what the backbone needs H and W divisible by (the head adds ``grid`` or ``tile``).
        tile: tile side in pixels (grid ``H/tile x W/tile``), instead of ``grid``.

    Raises:
        ConfigError: a non-positive size or count, or neither or both of ``grid`` and ``tile``.
    """

    has_graph_head = True  # how the training job knows to call forward(..., return_aux=True)

    def __init__(self, backbone: nn.Module, features: int = 16, out_channels: int = 1, grid: int | None = 16, hidden: int = 64,
                 layers: int = 2, size_divisor: int = 1, tile: int | None = None) -> None:
        super().__init__()
        if (grid is None) == (tile is None):
            raise ConfigError(f"graph_head needs exactly one of grid (tiles per side) and tile (pixels per tile); "
                              f"got grid={grid!r}, tile={tile!r}")
        checked = {"features": features, "out_channels": out_channels, "hidden": hidden, "layers": layers,
                   "size_divisor": size_divisor, "grid" if tile is None else "tile": grid if tile is None else tile}
        for key, value in checked.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"graph_head.{key} must be a positive integer, got {value!r}")
        self.backbone = backbone
        self.features, self.out_channels, self.grid, self.tile = features, out_channels, grid, tile
        self.size_divisor = math.lcm(size_divisor, grid if tile is None else tile)
        self.node_in = nn.Sequential(nn.Linear(2 * features, hidden), nn.GELU())
        self.graph_layers = nn.ModuleList(GraphConvolution(hidden) for _ in range(layers))
        self.node_classifier = nn.Linear(hidden, out_channels)
        # The fusion is one 1x1 convolution over concat(CNN features, upsampled node features and logits), applied
        # as its two column blocks: a 1x1 convolution commutes with nearest upsampling, so the node block runs on
        # the node grid and only C channels are upsampled: forward + backward of the fusion took 3 ms instead of
        # 50 ms for (8, 16, 96, 96) features and hidden 64 on one CPU thread.
        self.fuse_pixels = nn.Conv2d(features, out_channels, kernel_size=1)
        self.fuse_nodes = nn.Conv2d(hidden + out_channels, out_channels, kernel_size=1, bias=False)

    def node_grid(self, height: int, width: int) -> tuple[int, int]:
        """``(rows, cols)`` of the node grid for an input of ``height x width`` pixels."""
        return (self.grid, self.grid) if self.tile is None else (height // self.tile, width // self.tile)

    def check_input(self, images: torch.Tensor) -> None:
        """Raise ConfigError unless ``images`` is ``(B, C, H, W)`` with H and W divisible by ``size_divisor``."""
        if images.ndim != 4:
            raise ConfigError(f"the graph-head network takes (B, C, H, W) images, got shape {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height % self.size_divisor or width % self.size_divisor:
            tiling = f"grid {self.grid}" if self.tile is None else f"tile {self.tile}"
            raise ConfigError(
                f"input size {height}x{width} (HxW): the graph-head network needs height and width divisible by "
                f"{self.size_divisor} ({tiling} and the backbone's strides); pad the image or use "
                f"sliding-window inference with a roi_size that is a multiple of {self.size_divisor}"
            )

    def forward(self, images: torch.Tensor, return_aux: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """Segment ``images``.

        Args:
            images: ``(B, C_in, H, W)``, H and W divisible by ``size_divisor``.
            return_aux: also return the node outputs.

        Returns:
            The pixel logits ``(B, C, H, W)``; with ``return_aux`` a dict with ``"logits"`` (that tensor),
            ``"node_logits"`` ``(B, C, rows, cols)`` and ``"node_features"`` ``(B, hidden, rows, cols)``
            (``rows = cols = grid``, or ``H/tile`` and ``W/tile``).
        """
        self.check_input(images)
        feature_map = self.backbone(images)
        batch, _, height, width = feature_map.shape
        rows, cols = self.node_grid(height, width)
        tile = (height // rows, width // cols)  # whole tiles (checked): plain pooling, faster than adaptive
        pooled = torch.cat([F.avg_pool2d(feature_map, tile), F.max_pool2d(feature_map, tile)], 1)
        # The graph is small: run it in the weights' own precision (fp32 unless the model was cast), not autocast's.
        with torch.autocast(device_type=images.device.type, enabled=False):
            weight_dtype = self.node_classifier.weight.dtype
            nodes = self.node_in(pooled.to(weight_dtype).flatten(2).transpose(1, 2))  # (B, rows*cols, hidden)
            adjacency = grid_adjacency(rows, cols, images.device)
            for layer in self.graph_layers:
                nodes = layer(nodes, adjacency)
            node_logits = self.node_classifier(nodes)  # (B, rows*cols, C)
        node_features = nodes.transpose(1, 2).reshape(batch, -1, rows, cols)
        node_logits = node_logits.transpose(1, 2).reshape(batch, self.out_channels, rows, cols)
        node_part = self.fuse_nodes(torch.cat([node_features, node_logits], 1).to(feature_map.dtype))
        logits = self.fuse_pixels(feature_map) + F.interpolate(node_part, size=(height, width), mode="nearest")
        if return_aux:
            return {"logits": logits, "node_logits": node_logits, "node_features": node_features}
        return logits
