"""Grounding samples: images with their phrase boxes (and finding masks), checked and loaded.

A grounding record is a manifest record with ``image`` and ``boxes`` (a list
of ``{phrase, category?, x, y, w, h}`` in pixels of the image file), and
optionally ``masks`` (finding name -> mask file) as the chest phantoms give.
A record whose image cannot be read, or whose box lies outside its image, is
listed in ``skipped.csv`` and left out; it never stops the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from workbench.data.masks import read_binary_mask
from workbench.data.readers import read_image
from workbench.data.skipped import SkippedRecords
from workbench.errors import DataError
from workbench_plugins.grounding.boxes import check_box
from workbench_plugins.grounding.encoder import check_phrases


@dataclass
class GroundingSample:
    """One image with its phrases.

    Attributes:
        id: the record's id.
        image: ``(C, H, W)`` float32 in display units (C = 1 or 3).
        boxes: pixel boxes (``phrase``, ``category``, ``x``, ``y``, ``w``, ``h``), checked against the image.
        masks: box index -> ``(H, W)`` bool finding mask, where the record has one for the box's category.
        report: the record's report text ("" when absent).
        source: the image file.
    """

    id: str
    image: np.ndarray
    boxes: list[dict[str, Any]]
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    report: str = ""
    source: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def display(self) -> np.ndarray:
        """The image as ``(H, W)`` (grey) or ``(H, W, 3)`` for pages."""
        return self.image[0] if self.image.shape[0] == 1 else np.moveaxis(self.image, 0, -1)


def grounding_records(records: Sequence[Mapping[str, Any]], splits: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The records that have at least one box (and, when given, a ``split`` in ``splits``)."""
    chosen = []
    for record in records:
        if splits is not None and record.get("split") not in splits:
            continue
        if record.get("boxes"):
            chosen.append(dict(record))
    return chosen


def load_sample(record: Mapping[str, Any]) -> GroundingSample:
    """Read a record's image, check its boxes and phrases and read its finding masks.

    Args:
        record: a grounding record.

    Returns:
        The :class:`GroundingSample`.

    Raises:
        DataError: unreadable image or mask, an empty phrase, or a box outside the image (naming the file).
    """
    source = str(record.get("image") or "")
    if not source:
        raise DataError(record.get("id"), "field 'image': required but missing or empty")
    image, _ = read_image(source)
    height, width = image.shape[-2:]
    boxes, masks = [], {}
    mask_files = record.get("masks") or {}
    for index, box in enumerate(record.get("boxes") or []):
        x, y, w, h = check_box(box, height, width, source)
        phrase = check_phrases([box.get("phrase", "")], source)[0]
        category = str(box.get("category") or "all")
        boxes.append({"phrase": phrase, "category": category, "x": x, "y": y, "w": w, "h": h})
        if category in mask_files:
            mask = read_binary_mask(mask_files[category])
            if mask.shape != (height, width):
                raise DataError(mask_files[category], f"mask of {category!r} is {mask.shape}, its image {source} is {(height, width)}")
            masks[index] = mask
    if not boxes:
        raise DataError(source, "the record has no boxes to ground")
    return GroundingSample(str(record.get("id") or source), image, boxes, masks, str(record.get("report") or ""), source)


def iter_samples(records: Sequence[Mapping[str, Any]], skipped: SkippedRecords | None = None) -> Iterator[GroundingSample]:
    """Load records one by one; a bad one is added to ``skipped`` (with its reason) and passed over.

    Yields:
        :class:`GroundingSample` for every good record, in order.
    """
    skipped = skipped if skipped is not None else SkippedRecords()
    for record in records:
        try:
            yield load_sample(record)
        except DataError as error:
            skipped.add(record, error)


def negated_phrase(category: str) -> str:
    """The negation of a finding category as a report says it: ``"pleural_effusion"`` -> ``"no pleural effusion"``."""
    return "no " + category.replace("_", " ").strip()
