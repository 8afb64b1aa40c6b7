"""The frozen dual encoder grounding stands on, fetched from the model store by name.

The grounding plugin never imports the contrastive plugin: it asks the store
for a stored encoder (``ModelStore().get(name)``, built by whichever plugin
registered its factory) and uses its duck-typed methods (``tokenize``,
``encode_text``, ``encode_image``, ``image_features``, ``project_patch_tokens``,
``patch_grid``) and the stored record's preprocessing, so images are prepared
exactly as the encoder was trained.
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

REQUIRED_METHODS = ("tokenize", "encode_text", "encode_image", "image_features", "project_patch_tokens", "patch_grid")


def check_phrases(phrases: Sequence[str], source: str | None = None) -> list[str]:
    """Strip phrases and refuse empty ones.

    Raises:
        DataError: an empty or non-string phrase (naming ``source``).
    """
    cleaned = []
    for phrase in phrases:
        if not isinstance(phrase, str) or not phrase.strip():
            raise DataError(source, f"phrase {phrase!r} is empty; give the words to ground, e.g. 'left pleural effusion'")
        cleaned.append(" ".join(phrase.split()))
    return cleaned


def open_store(path: str | Path | None) -> ModelStore:
    """The model store at ``path``, or the default one."""
    return ModelStore(path) if path else ModelStore()


@dataclass
class GroundingEncoder:
    """A stored dual encoder with its preprocessing.

    Attributes:
        model: the eval-mode encoder (shared instance from the store's cache).
        record: its stored record (``record.ref`` names it in errors and pages).
        device: where it runs.
    """

    model: nn.Module
    record: ModelRecord
    device: torch.device

    @classmethod
    def from_store(cls, reference: str, store: ModelStore | None = None, device: str = "auto") -> "GroundingEncoder":
        """Fetch ``name[:version]`` from the store.

        Raises:
            RegistryError: unknown name/version, or its factory's plugin is not loaded.
            ConfigError: the stored model is not a dual encoder (a method is missing).
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
    def preprocessing(self) -> Preprocessing:
        """The stored preprocessing (image size, channels, mean/std)."""
        return self.record.preprocessing

    @property
    def image_size(self) -> int:
        """The square input side ``S`` of the image tower."""
        size = self.preprocessing.image_size
        return int(size if isinstance(size, int) else size[0])

    def prepare_images(self, images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """Resize and normalise images the way the encoder was trained.

        Args:
            images: ``(H, W)`` or ``(C, H, W)`` float arrays in display units (``[0, 1]``), any sizes.

        Returns:
            ``(B, C, S, S)`` float32 on the encoder's device (C from the preprocessing;
            one-channel images repeated), area-resized, then ``(x - mean) / std``.
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
    def encode_phrases(self, phrases: Sequence[str]) -> torch.Tensor:
        """``(T, D)`` L2-normalised phrase embeddings.

        Raises:
            DataError: an empty phrase.
        """
        phrases = check_phrases(phrases)
        return self.model.encode_text(self.model.tokenize(phrases).to(self.device)).float()

    @torch.no_grad()
    def encode_images(self, prepared: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` L2-normalised global image embeddings of prepared images ``(B, C, S, S)``."""
        return self.model.encode_image(prepared).float()

    @torch.no_grad()
    def patch_tokens(self, prepared: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image tower's patch tokens, raw and projected into the joint space.

        Args:
            prepared: ``(B, C, S, S)`` from :meth:`prepare_images`.

        Returns:
            ``(raw (B, N, Dv), projected (B, N, D) L2-normalised)`` with ``N = rows * cols``.

        Raises:
            ConfigError: the image tower gives no patch tokens (a CNN), naming the model.
        """
        _, tokens = self.model.image_features(prepared)
        if tokens is None:
            raise ConfigError(f"{self.record.ref}: its image tower gives no patch tokens (a CNN tower); "
                              "patch-similarity grounding needs a ViT encoder, or use method 'occlusion'")
        try:
            projected = self.model.project_patch_tokens(tokens)
        except ConfigError as error:
            raise ConfigError(f"{self.record.ref}: {error}") from error
        return tokens.float(), projected.float()

    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the patch grid.

        Raises:
            ConfigError: the encoder has no patch grid, naming the model.
        """
        try:
            rows, cols = self.model.patch_grid()
        except (AttributeError, ConfigError) as error:
            raise ConfigError(f"{self.record.ref}: no patch grid ({error})") from error
        return int(rows), int(cols)

    def text_conditioned_pool(self) -> Any:
        """The FLAIR text-conditioned attention pool when the stored model carries one, else ``None``.

        The contrastive plugin keeps FLAIR's pool in its objective, not in the
        stored encoder, so encoders stored by it today return ``None``.
        """
        for name in ("text_conditioned_pool", "flair_pool", "pool"):
            pool = getattr(self.model, name, None)
            if isinstance(pool, nn.Module) and hasattr(pool, "attention"):
                return pool
        return None

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for pages: reference, factory, image size, grid (when known)."""
        summary: dict[str, Any] = {"encoder": self.record.ref, "factory": self.record.factory, "image_size": self.image_size}
        try:
            summary["patch_grid"] = list(self.grid())
        except ConfigError:
            summary["patch_grid"] = None
        return summary
