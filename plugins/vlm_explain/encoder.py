"""The dual encoder being explained, fetched from the model store by name.

The plugin never imports the plugin that trained the encoder: it asks the store
for ``name[:version]`` and uses the model's duck-typed methods (``tokenize``,
``encode_text``, ``image_features``, ``project_patch_tokens``, ``patch_grid``)
and the preprocessing stored with the version, so images are prepared exactly
as the encoder was trained. The shared part (store lookup, image
preparation) is :class:`workbench.dual_encoder.StoredDualEncoder`; this adds what
explaining needs: the logit scale, embeddings with gradients, and the image
tower's last transformer block for gradient maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from workbench.dual_encoder import StoredDualEncoder, check_texts
from workbench.errors import ConfigError

__all__ = ["ExplainedEncoder", "check_texts"]

# CLIP's logit scale is clamped to 100 during training; a model without one gets CLIP's initial 1/0.07.
MAX_LOGIT_SCALE, DEFAULT_LOGIT_SCALE = 100.0, 1.0 / 0.07


@dataclass
class ExplainedEncoder(StoredDualEncoder):
    """A stored dual encoder with its preprocessing, as the explanations use it."""

    @property
    def logit_scale(self) -> float:
        """The encoder's inverse temperature ``exp(logit_scale)``, at most 100 (CLIP's clamp)."""
        scale = getattr(self.model, "logit_scale", None)
        if scale is None:
            return DEFAULT_LOGIT_SCALE
        return float(min(MAX_LOGIT_SCALE, float(torch.as_tensor(scale).detach().float().exp())))

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

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: reference, factory, image size, logit scale, patch grid (``None`` for CNN towers)."""
        summary: dict[str, Any] = {"model": self.ref, "factory": self.record.factory, "image_size": self.image_size,
                                   "logit_scale": self.logit_scale}
        try:
            summary["patch_grid"] = list(self.grid())
        except ConfigError:
            summary["patch_grid"] = None
        return summary
