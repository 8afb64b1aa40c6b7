"""Grounders: one image and its phrases in, heatmaps and boxes out (zero-shot or with a trained head).

Both kinds answer :meth:`ground` the same way, so the evaluate job, the
single-image command and the demo treat them alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import ConfigError
from workbench.model_records import parse_ref
from workbench.model_store import ModelStore
from workbench_plugins.grounding.boxes import cxcywh_to_pixel_box, heatmap_to_boxes
from workbench_plugins.grounding.encoder import GroundingEncoder, check_phrases
from workbench_plugins.grounding.zero_shot import ground_phrases

HEAD_TASK = "grounding"


@dataclass
class Grounding:
    """What a grounder gives for one image.

    Attributes:
        heatmaps: ``(T, H, W)`` float32, one per phrase, at the image's size.
        boxes: per phrase, predicted pixel boxes best first (each with ``score``).
    """

    heatmaps: np.ndarray
    boxes: list[list[dict[str, Any]]]


class ZeroShotGrounder:
    """Zero-shot heatmaps (see :mod:`~workbench_plugins.grounding.zero_shot`) and boxes from their connected components.

    Args:
        encoder: the stored encoder.
        method: ``similarity``, ``occlusion``, ``flair-attention`` or ``interaction-cam``.
        window, overlap, fill: occlusion settings.
        threshold: heatmap fraction above which pixels form boxes.
        max_boxes: boxes kept per phrase.
    """

    def __init__(self, encoder: GroundingEncoder, method: str = "occlusion", window: float | Sequence[float] = 0.25, overlap: float = 0.5,
                 threshold: float = 0.5, max_boxes: int = 3, fill: str = "dark"):
        self.encoder, self.method, self.window, self.overlap, self.fill = encoder, method, window, overlap, fill
        self.threshold, self.max_boxes = threshold, max_boxes
        self.label = f"zero-shot {method} on {encoder.record.ref}"

    def ground(self, image: np.ndarray, phrases: Sequence[str]) -> Grounding:
        """Heatmaps ``(T, H, W)`` and boxes for ``phrases`` on ``image`` (``(C, H, W)`` or ``(H, W)``)."""
        maps = ground_phrases(self.encoder, image, phrases, method=self.method, window=self.window, overlap=self.overlap, fill=self.fill)
        return Grounding(maps, [heatmap_to_boxes(heatmap, self.threshold, self.max_boxes) for heatmap in maps])


HEATMAPS = ("patches", "box")


def box_weighted(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Weight heatmaps by a Gaussian on each phrase's predicted box (the head's two outputs in one map).

    Args:
        maps: ``(T, H, W)`` heatmaps at the image's size.
        boxes: ``(T, 4)`` normalised ``(cx, cy, w, h)`` predicted boxes.

    Returns:
        ``(T, H, W)``: ``maps * exp(-((x - cx)^2 / (2 sx^2) + (y - cy)^2 / (2 sy^2)))`` with ``sx, sy`` half the box's
        width and height (in pixels, at least one), so the peak lies where the patch map agrees with the box.
    """
    count, height, width = maps.shape
    ys = (torch.arange(height, dtype=maps.dtype, device=maps.device) + 0.5) / height
    xs = (torch.arange(width, dtype=maps.dtype, device=maps.device) + 0.5) / width
    cx, cy, w, h = (boxes[:, index, None].to(maps) for index in range(4))
    sx, sy = torch.clamp(w / 2, min=1.0 / width), torch.clamp(h / 2, min=1.0 / height)
    weight_x = torch.exp(-((xs[None] - cx) ** 2) / (2 * sx ** 2))
    weight_y = torch.exp(-((ys[None] - cy) ** 2) / (2 * sy ** 2))
    return maps * weight_y[:, :, None] * weight_x[:, None, :]


class HeadGrounder:
    """A trained :class:`~workbench_plugins.grounding.models.PhraseGroundingHead` on its frozen encoder.

    Args:
        encoder: the encoder the head was trained on.
        head: the head (eval mode, on the encoder's device).
        label: how pages name it.
        heatmap: ``patches`` (the sigmoid of the patch logits, upsampled) or ``box`` (that map weighted by a Gaussian on
            the regressed box, :func:`box_weighted`: the patch grid is coarse, the box is not).

    Raises:
        ConfigError: an unknown ``heatmap``.
    """

    def __init__(self, encoder: GroundingEncoder, head: nn.Module, label: str = "grounding head", heatmap: str = "patches"):
        if heatmap not in HEATMAPS:
            raise ConfigError(f"grounding head heatmap must be one of {HEATMAPS}, got {heatmap!r}")
        self.encoder, self.head, self.label, self.heatmap = encoder, head.eval(), label, heatmap

    @classmethod
    def from_store(cls, reference: str, store: ModelStore, device: str = "auto") -> "HeadGrounder":
        """Load a stored head and the encoder named in its record (``extra.encoder``).

        Raises:
            RegistryError: unknown head or encoder.
            ConfigError: the stored model is not a grounding head.
        """
        name, version = parse_ref(reference)
        record = store.resolve(name, version)
        if record.task != HEAD_TASK or "encoder" not in record.extra:
            raise ConfigError(f"{record.ref} is a {record.task!r} model, not a grounding head (task {HEAD_TASK!r} with extra.encoder)")
        encoder = GroundingEncoder.from_store(record.extra["encoder"], store, device=device)
        head = store.get(name, version, device=str(encoder.device))
        return cls(encoder, head, f"head {record.ref} on {encoder.record.ref}", record.extra.get("heatmap", "patches"))

    @torch.no_grad()
    def predict(self, tokens: torch.Tensor, phrases: torch.Tensor) -> dict[str, torch.Tensor]:
        """The head's outputs for ``tokens`` ``(B, N, Dv)`` and ``phrases`` ``(B, D)``."""
        return self.head(tokens.to(self.encoder.device), phrases.to(self.encoder.device))

    def ground(self, image: np.ndarray, phrases: Sequence[str]) -> Grounding:
        """Heatmaps (sigmoid of the patch logits, upsampled; weighted by the box with ``heatmap="box"``) and the regressed box per phrase."""
        phrases = check_phrases(phrases)
        height, width = np.shape(image)[-2:]
        prepared = self.encoder.prepare_images([image])
        tokens, _ = self.encoder.patch_tokens(prepared)
        embeddings = self.encoder.encode_phrases(phrases)
        outputs = self.predict(tokens.expand(len(phrases), -1, -1), embeddings)
        heat = torch.sigmoid(outputs["heatmap_logits"].float())
        maps = F.interpolate(heat[:, None], size=(int(height), int(width)), mode="bilinear", align_corners=False)[:, 0]
        if self.heatmap == "box":
            maps = box_weighted(maps, outputs["boxes"].float())
        maps = maps.cpu().numpy()
        boxes = []
        for index, box in enumerate(outputs["boxes"].float().cpu().numpy()):
            pixel_box = cxcywh_to_pixel_box(box, int(height), int(width))
            pixel_box["score"] = float(maps[index].max())
            boxes.append([pixel_box])
        return Grounding(maps, boxes)


def build_grounder(encoder_ref: str, store: ModelStore, device: str, head: str | None, method: str, window: float | Sequence[float],
                   overlap: float, threshold: float, max_boxes: int, fill: str = "dark") -> ZeroShotGrounder | HeadGrounder:
    """A head grounder when ``head`` names a stored head, else a zero-shot grounder on ``encoder_ref``."""
    if head:
        return HeadGrounder.from_store(head, store, device)
    encoder = GroundingEncoder.from_store(encoder_ref, store, device)
    return ZeroShotGrounder(encoder, method, window, overlap, threshold, max_boxes, fill)
