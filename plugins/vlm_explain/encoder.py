"""The dual encoder being explained, fetched from the model store by name.

The plugin never imports the plugin that trained the encoder: it asks the store
for ``name[:version]`` and uses the model's duck-typed methods (``tokenize``,
``encode_text``, ``image_features``, ``project_patch_tokens``, ``patch_grid``)
and the preprocessing stored with the version, so images are prepared exactly
as the encoder was trained. The grounding plugin holds a similar wrapper; this
one is kept separate (a plugin never imports another) and adds what explaining
needs: the logit scale, embeddings with gradients, and the image tower's last
transformer block for gradient maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import ConfigError, DataError
from workbench.model_records import ModelRecord, Preprocessing, parse_ref
from workbench.model_store import ModelStore

REQUIRED_METHODS = ("tokenize", "encode_text", "image_features")
# CLIP's logit scale is clamped to 100 during training; a model without one gets CLIP's initial 1/0.07.
MAX_LOGIT_SCALE, DEFAULT_LOGIT_SCALE = 100.0, 1.0 / 0.07


def check_texts(texts: Sequence[str], what: str = "text", source: str | None = None) -> list[str]:
    """Strip texts (whitespace collapsed) and refuse empty ones.

    Raises:
        DataError: an empty or non-string entry (naming ``source`` and ``what``).
    """
    cleaned = []
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise DataError(source, f"{what} {text!r} is empty")
        cleaned.append(" ".join(text.split()))
    return cleaned


def open_store(path: str | Path | None) -> ModelStore:
    """The model store at ``path``, or the default one."""
    return ModelStore(path) if path else ModelStore()


@dataclass
class ExplainedEncoder:
    """A stored dual encoder with its preprocessing, as the explanations use it.

    Attributes:
        model: the eval-mode encoder (the store's shared instance).
        record: its stored record (``record.ref`` names it in errors and pages).
        device: where it runs.
    """

    model: nn.Module
    record: ModelRecord
    device: torch.device

    @classmethod
    def from_store(cls, reference: str, store: ModelStore | None = None, device: str = "auto") -> "ExplainedEncoder":
        """Fetch ``name[:version]`` from ``store`` (default store when ``None``).

        Raises:
            RegistryError: unknown name/version, or its factory's plugin is not loaded.
            ConfigError: the stored model is not a dual image-text encoder (a method is missing).
        """
        store = store or ModelStore()
        name, version = parse_ref(reference)
        record = store.resolve(name, version)
        model = store.get(name, version, device=device)
        missing = [method for method in REQUIRED_METHODS if not callable(getattr(model, method, None))]
        if missing:
            raise ConfigError(f"{record.ref} (task {record.task!r}) is not a dual image-text encoder: it lacks {', '.join(missing)}")
        return cls(model=model, record=record, device=next(model.parameters()).device)

    @property
    def ref(self) -> str:
        """``name:vN`` of the stored version."""
        return self.record.ref

    @property
    def preprocessing(self) -> Preprocessing:
        """The stored preprocessing (image size, channels, mean/std)."""
        return self.record.preprocessing

    @property
    def image_size(self) -> int:
        """The square input side ``S`` of the image tower."""
        size = self.preprocessing.image_size
        return int(size if isinstance(size, int) else size[0])

    @property
    def logit_scale(self) -> float:
        """The encoder's inverse temperature ``exp(logit_scale)``, at most 100 (CLIP's clamp)."""
        scale = getattr(self.model, "logit_scale", None)
        if scale is None:
            return DEFAULT_LOGIT_SCALE
        return float(min(MAX_LOGIT_SCALE, float(torch.as_tensor(scale).detach().float().exp())))

    def prepare_images(self, images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """Resize and normalise images the way the encoder was trained.

        Args:
            images: each ``(H, W)`` or ``(C, H, W)`` float in display units (``[0, 1]``), any size.

        Returns:
            ``(B, C, S, S)`` float32 on the encoder's device: one-channel images repeated to the
            stored channel count, area-resized, then ``(x - mean) / std``.
        """
        prepared = []
        channels = int(self.preprocessing.channels)
        for image in images:
            tensor = torch.as_tensor(np.asarray(image, dtype=np.float32))
            tensor = tensor[None] if tensor.dim() == 2 else tensor
            if tensor.shape[0] == 1 and channels > 1:
                tensor = tensor.repeat(channels, 1, 1)
            prepared.append(F.interpolate(tensor[None], size=(self.image_size, self.image_size), mode="area")[0])
        batch = torch.stack(prepared)
        if self.preprocessing.mean:
            mean = torch.tensor(self.preprocessing.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.preprocessing.std, dtype=torch.float32).view(1, -1, 1, 1)
            batch = (batch - mean) / std
        return batch.to(self.device)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """``(T, D)`` L2-normalised text embeddings, encoded ``batch_size`` at a time.

        Raises:
            DataError: an empty text.
        """
        texts = check_texts(texts)
        chunks = [self.model.encode_text(self.model.tokenize(texts[start:start + batch_size]).to(self.device)).float()
                  for start in range(0, len(texts), batch_size)]
        return F.normalize(torch.cat(chunks), dim=-1)

    def embed_images(self, prepared: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` L2-normalised image embeddings of prepared images ``(B, C, S, S)`` (differentiable)."""
        pooled, _ = self.model.image_features(prepared)
        return F.normalize(pooled.float(), dim=-1)

    @torch.no_grad()
    def encode_images(self, prepared: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """``(B, D)`` L2-normalised image embeddings, ``batch_size`` images per forward pass."""
        return torch.cat([self.embed_images(prepared[start:start + batch_size]) for start in range(0, len(prepared), batch_size)])

    @torch.no_grad()
    def patch_embeddings(self, prepared: torch.Tensor) -> torch.Tensor:
        """The image tower's patch tokens projected into the joint space.

        Args:
            prepared: ``(B, C, S, S)`` from :meth:`prepare_images`.

        Returns:
            ``(B, N, D)`` L2-normalised, ``N = rows * cols``.

        Raises:
            ConfigError: the model gives no patch tokens (a CNN image tower), naming the model.
        """
        _, tokens = self.model.image_features(prepared)
        project = getattr(self.model, "project_patch_tokens", None)
        if tokens is None or not callable(project):
            raise ConfigError(f"{self.ref}: a model without patch tokens (its image tower is not a ViT); concept regions and "
                              "Interaction-CAM need patch tokens: explain a ViT encoder, or use the occlusion map only")
        try:
            return project(tokens).float()
        except ConfigError as error:
            raise ConfigError(f"{self.ref}: a model without patch tokens ({error})") from error

    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the patch grid.

        Raises:
            ConfigError: the model has no patch grid, naming it.
        """
        try:
            rows, cols = self.model.patch_grid()
        except (AttributeError, ConfigError) as error:
            raise ConfigError(f"{self.ref}: a model without patch tokens (no patch grid: {error})") from error
        return int(rows), int(cols)

    def last_image_block(self) -> tuple[nn.Module, bool]:
        """The last transformer block of the image tower, and whether its tokens are batch-first.

        Found by structure, not by class: the last ``nn.ModuleList`` named ``resblocks``/``blocks``/``layers``
        under a module path naming the image side (``visual``, ``vision``, ``image``, ``trunk``).

        Raises:
            ConfigError: no such block (a CNN tower), naming the model.
        """
        candidates: list[tuple[str, nn.ModuleList]] = []
        for name, module in self.model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if isinstance(module, nn.ModuleList) and leaf in ("resblocks", "blocks", "layers") and len(module) > 0:
                if any(part in name for part in ("visual", "vision", "image", "trunk")):
                    candidates.append((name, module))
        if not candidates:
            raise ConfigError(f"{self.ref}: a model without patch tokens (no transformer blocks in its image tower); "
                              "Interaction-CAM needs a ViT encoder")
        name, blocks = candidates[-1]
        parent = self.model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else self.model
        return blocks[-1], bool(getattr(parent, "batch_first", True))

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: reference, factory, image size, logit scale, patch grid (``None`` for CNN towers)."""
        summary: dict[str, Any] = {"model": self.ref, "factory": self.record.factory, "image_size": self.image_size,
                                   "logit_scale": self.logit_scale}
        try:
            summary["patch_grid"] = list(self.grid())
        except ConfigError:
            summary["patch_grid"] = None
        return summary
