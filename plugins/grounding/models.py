"""The supervised grounding head: a phrase and a frozen encoder's patch tokens -> a heatmap and a box.

MedRPG-style (Chen et al., "Medical Grounding with Region-Phrase Context
Contrastive Alignment", MICCAI 2023): the phrase conditions the patch tokens,
a small transformer mixes them with a phrase token, the patch outputs give a
heatmap on the patch grid and the phrase token regresses one box. The encoder
stays frozen (and outside this module), so its features can be computed once
per image and the head trains in CPU minutes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workbench.errors import ConfigError


class PhraseGroundingHead(nn.Module):
    """Predict a patch heatmap and a box for a phrase from an image's patch tokens.

    Args:
        token_dim: width ``Dv`` of the image tower's patch tokens.
        text_dim: width ``D`` of the phrase embedding.
        grid: ``[rows, cols]`` of the patch grid (``N = rows * cols`` tokens).
        hidden: the head's width.
        layers: transformer layers over ``[phrase token, patch tokens]``.
        heads: attention heads.
        dropout: dropout inside the transformer.
    """

    def __init__(self, token_dim: int, text_dim: int, grid: list[int] | tuple[int, int], hidden: int = 128, layers: int = 2,
                 heads: int = 4, dropout: float = 0.1):
        super().__init__()
        if len(grid) != 2 or min(grid) < 1:
            raise ConfigError(f"grounding head: grid must be [rows, cols] of positive ints, got {grid!r}")
        if hidden % heads:
            raise ConfigError(f"grounding head: hidden {hidden} is not divisible by {heads} heads")
        self.grid = (int(grid[0]), int(grid[1]))
        tokens = self.grid[0] * self.grid[1]
        self.token_in = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, hidden))
        self.phrase_in = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden))
        self.film = nn.Linear(hidden, 2 * hidden)
        self.position = nn.Parameter(torch.zeros(1, tokens + 1, hidden))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True, norm_first=True)
        self.mixer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.heatmap_out = nn.Linear(hidden, 1)
        self.box_out = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 4))

    def forward(self, tokens: torch.Tensor, phrases: torch.Tensor) -> dict[str, torch.Tensor]:
        """Ground each phrase in its image.

        Args:
            tokens: ``(B, N, Dv)`` patch tokens of the frozen image tower.
            phrases: ``(B, D)`` phrase embeddings (one phrase per image row).

        Returns:
            ``heatmap_logits`` ``(B, rows, cols)`` and ``boxes`` ``(B, 4)`` normalised
            ``(cx, cy, w, h)`` in ``(0, 1)``.

        Raises:
            ConfigError: ``N`` differs from the grid the head was built for.
        """
        batch, count, _ = tokens.shape
        if count != self.grid[0] * self.grid[1]:
            raise ConfigError(f"grounding head built for a {self.grid[0]}x{self.grid[1]} grid got {count} patch tokens")
        phrase = self.phrase_in(phrases)
        scale, shift = self.film(phrase).chunk(2, dim=-1)
        patches = self.token_in(tokens) * (1 + scale[:, None]) + shift[:, None]
        mixed = self.norm(self.mixer(torch.cat([phrase[:, None], patches], dim=1) + self.position))
        heatmap = self.heatmap_out(mixed[:, 1:]).reshape(batch, *self.grid)
        return {"heatmap_logits": heatmap, "boxes": torch.sigmoid(self.box_out(mixed[:, 0]))}


def grounding_head(**config: Any) -> PhraseGroundingHead:
    """Phrase grounding head on frozen patch tokens (MedRPG-style box + heatmap)."""
    return PhraseGroundingHead(**config)
