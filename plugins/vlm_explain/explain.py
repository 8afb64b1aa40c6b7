"""One image, explained: the zero-shot decision with its concepts and regions, and the image-text similarity maps.

:class:`Explainer` holds what every image shares (the encoder, the embedded
concept bank, the class embeddings, the settings); :meth:`Explainer.explain`
does one image. Maps come back at the image's own size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from workbench.errors import ConfigError
from workbench_plugins.vlm_explain.encoder import ExplainedEncoder, check_texts
from workbench_plugins.vlm_explain.settings import ConceptSettings, DeletionSettings, MapSettings
from workbench_plugins.vlm_explain.similarity_maps import concept_regions, interaction_cam, occlusion_map, upsample
from workbench_plugins.vlm_explain.zero_shot import (
    ConceptSpace, DecisionExplanation, check_classes, class_embeddings, class_prompts, embed_concepts, explain_embedding,
)

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_HEADER = re.compile(r"^[A-Z][A-Z /-]{2,}:\s*")


def report_sentences(report: str) -> list[str]:
    """The report's sentences, section headers (``FINDINGS:``) stripped, empty ones dropped."""
    sentences = []
    for part in _SENTENCE.split(report or ""):
        part = _HEADER.sub("", part.strip()).strip()
        if part and not re.fullmatch(r"\d+\.?", part):
            sentences.append(part)
    return sentences


@dataclass
class SimilarityMap:
    """The maps of one text on one image, at the image's size.

    Attributes:
        text: the text (a report, a sentence, or a class's first prompt).
        similarity: the image-text cosine similarity.
        occlusion: ``(H, W)`` pairwise-occlusion map, or ``None`` when not drawn.
        cam: ``(H, W)`` Interaction-CAM map, or ``None`` (not drawn, or a model without patch tokens).
    """

    text: str
    similarity: float
    occlusion: np.ndarray | None = None
    cam: np.ndarray | None = None


@dataclass
class ImageExplanation:
    """Everything explained about one image.

    Attributes:
        decision: the zero-shot decision and its concepts (``None`` without classes).
        regions: concept -> ``(H, W)`` patch-similarity map for the top concepts.
        maps: the similarity maps (the chosen class, the report, and each text asked for).
        notes: remarks for the page (e.g. no concept moved the image toward the chosen class).
    """

    decision: DecisionExplanation | None
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    maps: list[SimilarityMap] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Explainer:
    """Explains images for one encoder, concept bank and class list.

    Args:
        encoder: the stored encoder.
        concepts: the concept bank (non-empty).
        classes: zero-shot classes (at least two), or ``None`` for similarity maps only.
        concept_settings, deletion, maps: the job's settings sections.
        image_mean: ``(D,)`` mean embedding of reference images (SpLiCE centring), or ``None``.
        bank_source: the bank's file, for errors.
        seed: the random deletion orders' seed.

    Raises:
        ConfigError: an empty bank, a class list of one, or a model without patch tokens when concept regions or
            Interaction-CAM are asked for (named, with how to turn them off).
    """

    def __init__(self, encoder: ExplainedEncoder, concepts: Sequence[str], classes: Sequence[str] | None,
                 concept_settings: ConceptSettings | None = None, deletion: DeletionSettings | None = None,
                 maps: MapSettings | None = None, image_mean: np.ndarray | None = None, bank_source: str | None = None,
                 seed: int = 0):
        self.encoder = encoder
        self.concept_settings = concept_settings or ConceptSettings()
        self.deletion = deletion or DeletionSettings()
        self.map_settings = maps or MapSettings()
        self.seed = seed
        self.classes = check_classes(classes) if classes is not None else None
        self.space: ConceptSpace = embed_concepts(encoder, concepts, image_mean, bank_source)
        self.class_vectors = class_embeddings(encoder, self.classes) if self.classes else None
        if self.map_settings.interaction_cam or (self.classes and self.map_settings.regions > 0):
            self._check_patch_tokens()

    def _check_patch_tokens(self) -> None:
        """Refuse, before any image is read, a model without patch tokens when regions or Interaction-CAM are asked for."""
        try:
            self.encoder.grid()
            self.encoder.last_image_block()
            self.encoder.patch_embeddings(self.encoder.prepare_images([np.zeros((self.encoder.image_size,) * 2, np.float32)]))
        except ConfigError as error:
            raise ConfigError(f"{error}. To explain it with occlusion maps only, turn concept regions and Interaction-CAM off "
                              "(maps.regions=0 maps.interaction_cam=false; on the command line --occlusion-only)") from error

    def decide(self, image_embedding: np.ndarray) -> DecisionExplanation:
        """The decision and its concept explanation for one ``(D,)`` image embedding."""
        if self.classes is None:
            raise ConfigError("no classes were given, so there is no zero-shot decision to explain")
        settings = self.concept_settings
        return explain_embedding(image_embedding, self.space, self.classes, self.class_vectors, self.encoder.logit_scale,
                                 top_k=settings.top_k, method=settings.method, alpha=settings.alpha, deletion_k=self.deletion.max_k,
                                 random_draws=self.deletion.random_draws, seed=self.seed)

    def similarity_maps(self, prepared: Any, texts: Sequence[str], size: tuple[int, int]) -> list[SimilarityMap]:
        """Occlusion and Interaction-CAM maps of ``texts`` on a prepared ``(1, C, S, S)`` image, at ``size`` ``(H, W)``.

        Raises:
            ConfigError: Interaction-CAM asked of a model without patch tokens (named).
        """
        texts = check_texts(texts)
        vectors = self.encoder.encode_texts(texts)
        image_vector = self.encoder.encode_images(prepared)[0]
        results = []
        for text, vector in zip(texts, vectors):
            item = SimilarityMap(text, float(image_vector @ vector))
            if self.map_settings.occlusion:
                grid = occlusion_map(self.encoder, prepared, vector, self.map_settings.window, self.map_settings.overlap)
                item.occlusion = upsample(grid[None], size)[0]
            if self.map_settings.interaction_cam:
                item.cam = upsample(interaction_cam(self.encoder, prepared, vector)[None], size)[0]
            results.append(item)
        return results

    def explain(self, image: np.ndarray, report: str | None = None, texts: Sequence[str] = (), sentence_maps: bool = True,
                class_map: bool = True) -> ImageExplanation:
        """Explain one image.

        Args:
            image: ``(H, W)`` or ``(C, H, W)`` float in display units.
            report: a report to explain the image-report similarity of (and, with ``sentence_maps``, each sentence's).
            texts: more texts to draw similarity maps for.
            sentence_maps: also map each report sentence.
            class_map: also map the chosen class's prompt (when there are classes).

        Returns:
            The :class:`ImageExplanation` (``decision`` is ``None`` without classes).

        Raises:
            ConfigError: regions or Interaction-CAM asked of a model without patch tokens (named).
        """
        size = tuple(int(s) for s in np.shape(image)[-2:])
        prepared = self.encoder.prepare_images([image])
        explanation = ImageExplanation(None)
        map_texts: list[str] = []
        if self.classes is not None:
            decision = self.decide(self.encoder.encode_images(prepared)[0].cpu().numpy())
            explanation.decision = decision
            if not decision.top_concepts(1):
                explanation.notes.append("no concept of the bank moves this image toward the chosen class")
            if class_map:
                map_texts.append(class_prompts(decision.chosen_class)[1])
            self._regions(prepared, decision, size, explanation)
        if report and report.strip():
            map_texts.append(" ".join(report.split()))
            if sentence_maps:
                map_texts.extend(report_sentences(report))
        map_texts.extend(texts)
        unique = list(dict.fromkeys(map_texts))
        if unique and (self.map_settings.occlusion or self.map_settings.interaction_cam):
            explanation.maps = self.similarity_maps(prepared, unique, size)
        return explanation

    def _regions(self, prepared: Any, decision: DecisionExplanation, size: tuple[int, int], explanation: ImageExplanation) -> None:
        """Region maps of the decision's top concepts."""
        top = decision.top_concepts(self.map_settings.regions)
        if not top:
            return
        grids = concept_regions(self.encoder, prepared, self.space.embeddings[[row["index"] for row in top]])
        for row, heatmap in zip(top, upsample(grids, size)):
            explanation.regions[row["concept"]] = heatmap
