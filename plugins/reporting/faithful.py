"""Faithfulness judges: does the finding an explanation names sit where a localisation source points?

Two sources, named in the metrics:

- ``grounding heatmap``: a stored grounding head (task ``grounding``, trained on
  the same encoder) grounds the explanation sentence itself in the image; the
  explanation is faithful when the heatmap's peak lies inside the mask of
  every finding the explanation names (so a sentence naming a finding the
  image does not have, or pointing elsewhere, fails). The head is duck-typed:
  ``head(tokens (B, N, Dv), phrase embeddings (B, D)) -> {"heatmap_logits": (B, rows, cols)}``,
  phrases embedded with the encoder's ``tokenize``/``encode_text``.
- ``finding masks``: without a heatmap, the named finding must have a mask in the record.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from workbench.data.masks import read_binary_mask
from workbench.errors import ConfigError, DataError, RegistryError
from workbench.model_records import parse_ref
from workbench.model_store import ModelStore
from workbench_plugins.reporting.features import ImageTokens, ReportingEncoder

logger = logging.getLogger("workbench.reporting")

# (record index, explanation, findings it names positively) -> faithful?
Judge = Callable[[int, str, Sequence[str]], bool]


def mask_judge(records: Sequence[Mapping[str, Any]]) -> Judge:
    """Faithful when every named finding has a mask in the record."""
    def judge(record_index: int, explanation: str, named: Sequence[str]) -> bool:
        masks = records[record_index].get("masks") or {}
        return all(name in masks for name in named)

    return judge


class GroundingJudge:
    """Faithfulness by a stored grounding head's heatmap of the explanation (see the module docstring).

    Args:
        head: the grounding head module (eval mode).
        encoder: the frozen encoder the head was trained on (its text tower embeds the explanation).
        tokens: cached image tokens of the records (``tokens.kept`` indexes them).
        records: the records (their ``masks`` name mask files).
    """

    def __init__(self, head: torch.nn.Module, encoder: ReportingEncoder, tokens: ImageTokens, records: Sequence[Mapping[str, Any]]):
        self.head, self.encoder, self.tokens, self.records = head, encoder, tokens, records
        self.rows = {record_index: row for row, record_index in enumerate(tokens.kept)}
        self._masks: dict[tuple[int, str], np.ndarray] = {}

    @torch.no_grad()
    def heatmap(self, record_index: int, phrase: str) -> torch.Tensor:
        """``(rows, cols)`` heatmap logits of ``phrase`` in the record's image."""
        model = self.encoder.model
        device = self.encoder.device
        embedding = model.encode_text(model.tokenize([phrase]).to(device)).float()
        tokens = self.tokens.tokens[self.rows[record_index]][None].to(device)
        head_device = next(self.head.parameters()).device
        return self.head(tokens.to(head_device), embedding.to(head_device))["heatmap_logits"][0].float().cpu()

    def _mask(self, record_index: int, finding: str) -> np.ndarray | None:
        key = (record_index, finding)
        if key not in self._masks:
            path = (self.records[record_index].get("masks") or {}).get(finding)
            if not path:
                return None
            self._masks[key] = read_binary_mask(path)
        return self._masks[key]

    def __call__(self, record_index: int, explanation: str, named: Sequence[str]) -> bool:
        """Whether the heatmap of ``explanation`` peaks inside every named finding's mask."""
        heatmap = self.heatmap(record_index, explanation)
        for finding in named:
            mask = self._mask(record_index, finding)
            if mask is None:
                return False
            full = F.interpolate(heatmap[None, None], size=mask.shape, mode="bilinear", align_corners=False)[0, 0]
            row, col = divmod(int(full.argmax()), mask.shape[1])
            if not mask[row, col]:
                return False
        return True


def grounding_judge(reference: str, store: ModelStore, encoder: ReportingEncoder, tokens: ImageTokens,
                    records: Sequence[Mapping[str, Any]]) -> GroundingJudge:
    """Load a stored grounding head trained on ``encoder`` and make its judge.

    Raises:
        RegistryError: unknown head.
        ConfigError: not a grounding head, trained on another encoder, or an encoder without a text tower.
    """
    name, version = parse_ref(reference)
    record = store.resolve(name, version)
    if record.task != "grounding":
        raise ConfigError(f"{record.ref} has task {record.task!r}, not 'grounding'")
    if record.extra.get("encoder") != encoder.record.ref:
        raise ConfigError(f"{record.ref} was trained on {record.extra.get('encoder')}, not on {encoder.record.ref}")
    if not callable(getattr(encoder.model, "encode_text", None)):
        raise ConfigError(f"{encoder.record.ref} has no text tower to embed explanations for {record.ref}")
    head = store.get(name, record.version, device=str(encoder.device))
    return GroundingJudge(head, encoder, tokens, records)


def choose_judge(source: str, head: str | None, store: ModelStore, encoder: ReportingEncoder, tokens: ImageTokens,
                 records: Sequence[Mapping[str, Any]]) -> tuple[Judge, str]:
    """The judge for ``source`` (``grounding``, ``masks`` or ``auto``: the grounding head when it loads, else the masks).

    Returns:
        ``(judge, its source name for the metrics)``.

    Raises:
        ConfigError / RegistryError: ``source`` is ``grounding`` and the head cannot be used.
    """
    if source in ("grounding", "auto") and head:
        try:
            return grounding_judge(head, store, encoder, tokens, records), f"grounding heatmap ({head})"
        except (ConfigError, RegistryError, DataError) as error:
            if source == "grounding":
                raise
            logger.warning("faithfulness: grounding head not usable (%s); using the finding masks", error)
    elif source == "grounding":
        raise ConfigError("faithfulness.source 'grounding' needs faithfulness.grounding_head")
    return mask_judge(records), "finding masks"
