"""Settings of the ``explain-vlm`` jobs (YAML sections; unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from workbench.config import RunSettings, StrictModel

PHANTOM_CLASSES = ["nodule", "consolidation", "pleural effusion", "cardiomegaly", "pneumothorax"]


class ModelSettings(StrictModel):
    """The dual encoder explained: ``name[:version]`` in the model store (``store: null`` = the default store)."""

    name: str = "contrastive-phantom-clip:latest"
    store: Path | None = None


class ConceptSettings(StrictModel):
    """The concept bank and the decomposition.

    Attributes:
        bank: the concept bank file (one concept per line; ``workbench explain-vlm concepts`` writes one).
        method: ``lasso`` (sparse, ``Lasso(positive=True)``) or ``nnls`` (scipy's non-negative least squares).
        alpha: the lasso's L1 weight.
        top_k: concepts shown and compared for the mutual-knowledge score.
        centre_images: take the mean image embedding of reference images out before decomposing (SpLiCE's
            modality-gap correction); the text side is always centred on the bank's mean.
        reference_images: how many images of the data's reference split estimate that mean.
    """

    bank: Path = Path("configs/concepts_cxr.txt")
    method: Literal["lasso", "nnls"] = "lasso"
    alpha: float = Field(1e-4, gt=0)
    top_k: int = Field(5, ge=1)
    centre_images: bool = False
    reference_images: int = Field(256, ge=1)


class DeletionSettings(StrictModel):
    """The faithfulness test: remove k = 0..max_k concepts; the random baseline averages ``random_draws`` orders."""

    max_k: int = Field(10, ge=1)
    random_draws: int = Field(10, ge=1)


class MapSettings(StrictModel):
    """Similarity maps and concept regions.

    Attributes:
        occlusion: draw pairwise-occlusion maps; ``window`` (fraction of the input side) and ``overlap`` set the occluder.
        interaction_cam: draw Interaction-CAM maps (ViT towers only).
        regions: how many top concepts get a region overlay (patch-token similarity; ViT towers only).
    """

    occlusion: bool = True
    interaction_cam: bool = True
    window: float = Field(0.25, gt=0, le=1)
    overlap: float = Field(0.5, ge=0, lt=1)
    regions: int = Field(3, ge=0)


class ExplainDataSettings(StrictModel):
    """The images of the batch form.

    Attributes:
        manifest: a CSV/JSONL manifest (``image``; ``report``, ``findings``, ``boxes`` where known).
        image_key: the field holding the image path (e.g. ``image_png``).
        splits: the records explained (by their ``split``; records without one count as ``test``).
        reference_split: the split whose images give the image mean (``concepts.centre_images``).
        max_images: explain at most this many images.
        max_map_images: draw similarity maps for at most this many of them (maps cost ~50 forward passes each).
    """

    manifest: Path | None = None
    image_key: str = "image"
    splits: list[str] = ["test"]
    reference_split: str = "train"
    max_images: int | None = Field(None, ge=1)
    max_map_images: int | None = Field(None, ge=0)


class ExplainSettings(StrictModel):
    """``workbench explain-vlm evaluate --config ...``: explain a manifest's images and score the explanations.

    Attributes:
        classes: the zero-shot classes (at least two).
        finding_keywords: per class, words one of which a concept must contain to "name" it
            (default: the class name's last word).
        examples: images shown on the page with their full explanation.
        examples_from: which images those are: ``first`` (the first explained, whatever their decision) or ``correct``
            (the first whose decision is one of the image's findings; the page says so, and its accuracy is still over all).
    """

    run: RunSettings = RunSettings()
    model: ModelSettings = ModelSettings()
    concepts: ConceptSettings = ConceptSettings()
    deletion: DeletionSettings = DeletionSettings()
    maps: MapSettings = MapSettings()
    data: ExplainDataSettings = ExplainDataSettings()
    classes: list[str] = list(PHANTOM_CLASSES)
    finding_keywords: dict[str, list[str]] = {}
    examples: int = Field(4, ge=0)
    examples_from: Literal["first", "correct"] = "first"

    @field_validator("classes")
    @classmethod
    def _two_or_more(cls, classes: list[str]) -> list[str]:
        if len({name.strip().lower() for name in classes if name.strip()}) < 2:
            raise ValueError("a zero-shot decision needs at least two classes (a class list of one always scores 1.0)")
        return classes
