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
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from workbench.dual_encoder import PatchDualEncoder, StoredDualEncoder, check_texts
from workbench.errors import ConfigError

__all__ = ["GroundingEncoder", "check_phrases"]


def check_phrases(phrases: Sequence[str], source: str | None = None) -> list[str]:
    """Strip phrases and refuse empty ones (see :func:`workbench.dual_encoder.check_texts`).

    Raises:
        DataError: an empty or non-string phrase (naming ``source``).
    """
    return check_texts(phrases, "phrase", source, hint="give the words to ground, e.g. 'left pleural effusion'")


@dataclass
class GroundingEncoder(StoredDualEncoder):
    """A stored dual encoder with its preprocessing, as grounding uses it (global and patch embeddings)."""

    PROTOCOL: ClassVar[type] = PatchDualEncoder

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
