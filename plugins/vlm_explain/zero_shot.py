"""Zero-shot decisions of a dual encoder and their concept explanations.

A decision: each class name becomes a few report-style prompts ("Pleural
effusion is present."), their embeddings are averaged (CLIP's prompt
ensembling), and the image's cosine similarities to the classes, times the
encoder's logit scale, go through a softmax. The explanation decomposes the
image embedding and the chosen class's text embedding over the concept bank
(:mod:`.decomposition`), ranks the concepts by their share of the chosen class's
margin on each side, scores how well the two rankings agree (mutual
knowledge), and runs the deletion test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from workbench.errors import ConfigError
from workbench_plugins.vlm_explain.concepts import check_concepts
from workbench_plugins.vlm_explain.decomposition import (
    DeletionCurves, centre, class_margins, concept_contributions, deletion_curves, mutual_knowledge, nonnegative_decomposition,
    softmax_scores, top_indices,
)
from workbench_plugins.vlm_explain.encoder import ExplainedEncoder

# Report sentences, not "a photo of" captions: the text tower was trained on reports.
CLASS_TEMPLATES: tuple[str, ...] = ("{Name}.", "{Name} is present.", "There is {name}.", "Findings consistent with {name}.")


def check_classes(classes: Sequence[str]) -> list[str]:
    """Class names, comma-separated entries split, whitespace collapsed, duplicates dropped.

    Raises:
        ConfigError: fewer than two classes (a softmax over one class always says 1.0), or an empty name.
    """
    names: list[str] = []
    for entry in classes:
        for part in str(entry).split(","):
            name = " ".join(part.split())
            if name and name.lower() not in {known.lower() for known in names}:
                names.append(name)
    if len(names) < 2:
        raise ConfigError(f"a zero-shot decision needs at least two classes, got {names or 'none'}: a class list of one "
                          "always scores 1.0; add the alternatives, e.g. --classes 'pleural effusion,cardiomegaly,pneumothorax'")
    return names


def class_prompts(name: str) -> list[str]:
    """Report-style prompts for one class: ``"pleural_effusion"`` -> ``["Pleural effusion.", ...]``.

    A name that is already a sentence (ends with ``.``) is used as it is.
    """
    text = " ".join(name.replace("_", " ").split())
    if text.endswith("."):
        return [text]
    lower = text[:1].lower() + text[1:] if not text[:2].isupper() else text
    return [template.format(name=lower, Name=text[:1].upper() + text[1:]) for template in CLASS_TEMPLATES]


def class_embeddings(encoder: ExplainedEncoder, classes: Sequence[str]) -> np.ndarray:
    """``(K, D)`` unit class embeddings: the mean of each class's prompt embeddings, renormalised."""
    rows = []
    for name in classes:
        prompts = encoder.encode_texts(class_prompts(name)).cpu().numpy().astype(np.float64)
        mean = prompts.mean(axis=0)
        rows.append(mean / max(np.linalg.norm(mean), 1e-12))
    return np.stack(rows)


@dataclass
class ConceptSpace:
    """A concept bank embedded by one encoder.

    Attributes:
        concepts: the ``M`` concept texts.
        embeddings: ``(M, D)`` unit text embeddings.
        text_mean: ``(D,)`` their mean (the text side's centre).
        directions: ``(M, D)`` unit ``embedding - text_mean``: what the decompositions use.
        image_mean: ``(D,)`` the mean image embedding of a reference set (the image side's centre), or ``None``.
    """

    concepts: list[str]
    embeddings: np.ndarray
    text_mean: np.ndarray
    directions: np.ndarray
    image_mean: np.ndarray | None = None


def embed_concepts(encoder: ExplainedEncoder, concepts: Sequence[str], image_mean: np.ndarray | None = None,
                   source: str | None = None) -> ConceptSpace:
    """Embed a concept bank.

    Args:
        encoder: the encoder explained.
        concepts: the bank's concepts.
        image_mean: ``(D,)`` mean image embedding of reference images (see :func:`mean_image_embedding`), or ``None``.
        source: the bank's file, for errors.

    Raises:
        ConfigError: an empty bank (naming ``source``).
    """
    concepts = check_concepts(concepts, source)
    embeddings = encoder.encode_texts(concepts).cpu().numpy().astype(np.float64)
    text_mean = embeddings.mean(axis=0)
    return ConceptSpace(concepts, embeddings, text_mean, centre(embeddings, text_mean), image_mean)


@dataclass
class DecisionExplanation:
    """One zero-shot decision and why.

    Attributes:
        classes: the ``K`` class names; ``probabilities`` ``(K,)``; ``chosen`` the argmax.
        concepts: the bank's ``M`` concepts.
        image_weights, text_weights: ``(M,)`` non-negative decomposition weights of the (centred) image embedding
            and of the chosen class's (centred) text embedding.
        image_contributions, text_contributions: ``(M,)`` each concept's share of the chosen class's margin.
        mutual: :func:`~.decomposition.mutual_knowledge` of the two contribution rankings.
        deletion: the deletion curves (top-k versus random concepts).
        residual: relative norm of what the image decomposition leaves unexplained (0 = fully explained).
    """

    classes: list[str]
    probabilities: np.ndarray
    chosen: int
    concepts: list[str]
    image_weights: np.ndarray
    image_contributions: np.ndarray
    text_weights: np.ndarray
    text_contributions: np.ndarray
    mutual: dict[str, float]
    deletion: DeletionCurves
    residual: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen_class(self) -> str:
        """The name of the chosen class."""
        return self.classes[self.chosen]

    def top_concepts(self, k: int = 5) -> list[dict[str, Any]]:
        """The image side's ``k`` most contributing concepts (positive contributions only), largest first.

        Returns:
            Rows ``{"rank", "index", "concept", "contribution", "weight", "text_contribution", "shared"}``;
            ``shared`` says the concept is also in the text side's top ``k``.
        """
        text_top = set(top_indices(self.text_contributions, k).tolist())
        return [{"rank": rank + 1, "index": int(index), "concept": self.concepts[index],
                 "contribution": float(self.image_contributions[index]), "weight": float(self.image_weights[index]),
                 "text_contribution": float(self.text_contributions[index]), "shared": int(index) in text_top}
                for rank, index in enumerate(top_indices(self.image_contributions, k))]

    def summary(self, k: int = 5) -> dict[str, Any]:
        """A JSON-ready summary: decision, probabilities, top concepts, mutual knowledge, deletion AUCs."""
        return {
            "decision": self.chosen_class, "probability": float(self.probabilities[self.chosen]),
            "probabilities": {name: float(p) for name, p in zip(self.classes, self.probabilities)},
            "top_concepts": self.top_concepts(k),
            "text_top_concepts": [self.concepts[i] for i in top_indices(self.text_contributions, k)],
            "mutual_knowledge": self.mutual, "deletion_auc_topk": self.deletion.auc_top,
            "deletion_auc_random": self.deletion.auc_random,
            "deletion_curve_topk": self.deletion.top.tolist(), "deletion_curve_random": self.deletion.random.tolist(),
            "residual": self.residual,
        }


def explain_embedding(image_embedding: np.ndarray, space: ConceptSpace, classes: Sequence[str], class_vectors: np.ndarray,
                      logit_scale: float, top_k: int = 5, method: str = "lasso", alpha: float = 1e-4, deletion_k: int = 10,
                      random_draws: int = 10, seed: int = 0) -> DecisionExplanation:
    """Decide between ``classes`` for one image embedding and explain the decision with the concept bank.

    Args:
        image_embedding: ``(D,)`` the image's unit embedding.
        space: the embedded concept bank (with the image mean, when known).
        classes: the ``K >= 2`` class names; ``class_vectors`` their ``(K, D)`` unit embeddings.
        logit_scale: the encoder's inverse temperature.
        top_k: concepts compared for the mutual-knowledge score.
        method, alpha: the decomposition (see :func:`~.decomposition.nonnegative_decomposition`).
        deletion_k, random_draws, seed: the deletion test (see :func:`~.decomposition.deletion_curves`).

    Returns:
        The :class:`DecisionExplanation`.

    Raises:
        ConfigError: fewer than two classes.
    """
    classes = list(classes)
    if len(classes) < 2 or np.atleast_2d(class_vectors).shape[0] < 2:
        raise ConfigError(f"a zero-shot decision needs at least two classes, got {classes}")
    image_embedding = np.asarray(image_embedding, dtype=np.float64).reshape(-1)
    class_vectors = np.asarray(class_vectors, dtype=np.float64)
    probabilities = softmax_scores(image_embedding, class_vectors, logit_scale)
    chosen = int(np.argmax(probabilities))
    offset = space.image_mean
    centred_image = image_embedding - (offset if offset is not None else 0.0)
    image_norm = float(np.linalg.norm(centred_image))
    image_weights = nonnegative_decomposition(centred_image / max(image_norm, 1e-12), space.directions, method, alpha)
    margins = class_margins(space.directions, class_vectors, chosen)
    # Scaled by the centred norm, each contribution is the concept's share of the cosine margin itself.
    image_contributions = image_norm * concept_contributions(image_weights, margins)
    text_target = centre(class_vectors[chosen], space.text_mean)[0]
    text_weights = nonnegative_decomposition(text_target, space.directions, method, alpha)
    text_contributions = concept_contributions(text_weights, margins)
    residual = float(np.linalg.norm(centred_image / max(image_norm, 1e-12) - image_weights @ space.directions))
    deletion = deletion_curves(centred_image, space.directions, image_contributions, class_vectors, chosen, logit_scale,
                               max_k=deletion_k, draws=random_draws, seed=seed, offset=offset)
    return DecisionExplanation(classes, probabilities, chosen, list(space.concepts), image_weights, image_contributions,
                               text_weights, text_contributions, mutual_knowledge(image_contributions, text_contributions, top_k),
                               deletion, residual)


def mean_image_embedding(encoder: ExplainedEncoder, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """``(D,)`` the mean unit embedding of reference images (the image side's centre for the decompositions)."""
    if not len(images):
        raise ConfigError("the image mean needs at least one reference image")
    sums, count = None, 0
    for start in range(0, len(images), batch_size):
        embedded = encoder.encode_images(encoder.prepare_images(images[start:start + batch_size])).cpu().numpy().astype(np.float64)
        sums = embedded.sum(axis=0) if sums is None else sums + embedded.sum(axis=0)
        count += len(embedded)
    return sums / count
