"""The maths of concept explanations: sparse non-negative decompositions, contributions, agreement, deletion.

After Sammani and Deligiannis, "Interpreting and Analysing CLIP's Zero-Shot
Image Classification via Mutual Knowledge" (NeurIPS 2024), adapted to a
concept bank of report phrases, and SpLiCE (Bhalla et al., NeurIPS 2024) for
the decomposition: an embedding is written as a non-negative combination of
concept embeddings, after each modality's mean is taken out (the "modality
gap": image and text embeddings of a CLIP-style model live in two separate
cones, so an uncentred image embedding is mostly explained by whatever concept
is closest to the text cone's centre).

Everything here works on numpy arrays and is independent of any model:

- :func:`nonnegative_decomposition`: ``x ~ w @ C`` with ``w >= 0`` (scipy ``nnls``, or
  scikit-learn ``Lasso(positive=True)`` for a sparser answer).
- :func:`concept_contributions`: each concept's share of the chosen class's logit margin.
- :func:`mutual_knowledge`: how well two concept rankings agree (top-k overlap, weighted Kendall tau).
- :func:`remove_directions`, :func:`deletion_curve`, :func:`curve_auc`: the faithfulness test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.linalg import orth
from scipy.optimize import nnls
from scipy.stats import weightedtau

from workbench.errors import ConfigError


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero): ``(M, D) -> (M, D)`` float64."""
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def centre(vectors: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """``vectors - mean`` rescaled to unit rows (``mean=None``: unit rows only): ``(M, D) -> (M, D)``."""
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    return unit_rows(vectors if mean is None else vectors - np.asarray(mean, dtype=np.float64)[None])


def nonnegative_decomposition(target: np.ndarray, concepts: np.ndarray, method: str = "lasso", alpha: float = 1e-4) -> np.ndarray:
    """Non-negative weights ``w`` with ``target ~ w @ concepts``.

    Args:
        target: ``(D,)`` the embedding to explain.
        concepts: ``(M, D)`` concept embeddings (one per row).
        method: ``lasso`` (default: ``Lasso(positive=True)``, ``alpha`` sets the sparsity; on the phantoms' encoder
            alpha 1e-4 keeps ~20 of ~120 concepts) or ``nnls`` (scipy's exact non-negative least squares: no
            sparsity control, and with correlated concept embeddings it spreads large cancelling weights over most
            of the bank).
        alpha: the L1 weight for ``lasso`` (scikit-learn's scaling: ``1 / (2 D) ||x - w C||^2 + alpha ||w||_1``).

    Returns:
        ``(M,)`` float64 weights, all ``>= 0``.

    Raises:
        ConfigError: an empty concept matrix, mismatched sizes or an unknown method.
    """
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    concepts = np.atleast_2d(np.asarray(concepts, dtype=np.float64))
    if concepts.size == 0 or concepts.shape[0] == 0:
        raise ConfigError("the concept bank is empty: there is nothing to decompose the embedding over")
    if concepts.shape[1] != target.shape[0]:
        raise ConfigError(f"concept embeddings have {concepts.shape[1]} dimensions, the embedding {target.shape[0]}")
    if method == "nnls":
        weights, _ = nnls(concepts.T, target, maxiter=50 * concepts.shape[0])
        return weights
    if method == "lasso":
        from sklearn.linear_model import Lasso

        model = Lasso(alpha=alpha, positive=True, fit_intercept=False, max_iter=50000, tol=1e-5)
        model.fit(concepts.T, target)
        return np.clip(model.coef_.astype(np.float64), 0.0, None)
    raise ConfigError(f"unknown decomposition method {method!r}; use 'nnls' or 'lasso'")


def class_margins(concepts: np.ndarray, classes: np.ndarray, chosen: int) -> np.ndarray:
    """How much each concept points to the chosen class rather than the others.

    Args:
        concepts: ``(M, D)`` concept directions.
        classes: ``(K, D)`` class text embeddings, ``K >= 2``.
        chosen: the chosen class's row.

    Returns:
        ``(M,)``: ``c_m . t_chosen - mean_{j != chosen} c_m . t_j``.

    Raises:
        ConfigError: fewer than two classes.
    """
    classes = np.atleast_2d(np.asarray(classes, dtype=np.float64))
    if classes.shape[0] < 2:
        raise ConfigError("a zero-shot decision needs at least two classes")
    similarities = np.asarray(concepts, dtype=np.float64) @ classes.T  # (M, K)
    others = np.delete(similarities, chosen, axis=1)
    return similarities[:, chosen] - others.mean(axis=1)


def concept_contributions(weights: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """Each concept's contribution to the chosen class's margin: ``weights * margins``, ``(M,)``.

    Why this is the right number: with ``x = sum_m w_m c_m + r`` the margin of the chosen class,
    ``x . t_k - mean_j x . t_j``, is exactly ``sum_m w_m margin_m + (r's margin)``: each concept's term is its
    additive share, positive when it moves the embedding toward the chosen class and away from the others.
    """
    return np.asarray(weights, dtype=np.float64) * np.asarray(margins, dtype=np.float64)


def top_indices(scores: np.ndarray, k: int, positive_only: bool = True) -> np.ndarray:
    """Indices of the ``k`` largest scores, largest first (only scores ``> 0`` when ``positive_only``)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    if positive_only:
        order = order[scores[order] > 0]
    return order[:k]


def mutual_knowledge(image_scores: np.ndarray, text_scores: np.ndarray, k: int = 5) -> dict[str, float]:
    """Agreement of the image-side and text-side concept rankings.

    Args:
        image_scores: ``(M,)`` concept contributions from the image embedding.
        text_scores: ``(M,)`` concept contributions from the chosen class's text embedding.
        k: the top-k compared.

    Returns:
        ``{"score", "top_k_overlap", "weighted_tau", "k"}``: ``top_k_overlap`` is the share of the image's top-k
        (positive) concepts that are also in the text's top-k (1 for identical rankings, 0 for disjoint);
        ``weighted_tau`` is scipy's hyperbolically weighted Kendall tau over the whole bank (top ranks weigh most;
        1 for identical orders, -1 for reversed); ``score`` is the mean of the overlap and ``(tau + 1) / 2``, in [0, 1].
    """
    image_scores = np.asarray(image_scores, dtype=np.float64)
    text_scores = np.asarray(text_scores, dtype=np.float64)
    image_top, text_top = top_indices(image_scores, k), top_indices(text_scores, k)
    denominator = max(len(image_top), len(text_top), 1)
    overlap = len(set(image_top.tolist()) & set(text_top.tolist())) / denominator
    if image_scores.size < 2 or np.ptp(image_scores) == 0 or np.ptp(text_scores) == 0:
        tau = 1.0 if np.array_equal(image_scores, text_scores) else 0.0
    else:
        tau = float(weightedtau(image_scores, text_scores).statistic)
        tau = 0.0 if not np.isfinite(tau) else tau
    return {"score": 0.5 * (overlap + (tau + 1.0) / 2.0), "top_k_overlap": float(overlap), "weighted_tau": tau, "k": int(k)}


def remove_directions(vector: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """``vector`` with its component in the span of ``directions`` removed (orthogonal projection).

    Args:
        vector: ``(D,)``.
        directions: ``(k, D)``, any: an orthonormal basis of their span is taken by SVD (``scipy.linalg.orth``), so a
            direction given twice, or one in the span of the others, is removed once.

    Returns:
        ``(D,)`` orthogonal to every direction.
    """
    vector = np.asarray(vector, dtype=np.float64)
    directions = np.atleast_2d(np.asarray(directions, dtype=np.float64))
    if directions.size == 0:
        return vector.copy()
    basis = orth(directions.T)  # (D, rank) orthonormal columns spanning the directions
    return vector - basis @ (basis.T @ vector)


def softmax_scores(embedding: np.ndarray, classes: np.ndarray, logit_scale: float) -> np.ndarray:
    """Zero-shot class probabilities ``softmax(scale * cos(embedding, classes))``: ``(K,)``."""
    unit = unit_rows(embedding)[0]
    logits = logit_scale * (unit_rows(classes) @ unit)
    logits -= logits.max()
    probabilities = np.exp(logits)
    return probabilities / probabilities.sum()


@dataclass
class DeletionCurves:
    """The faithfulness test's curves.

    Attributes:
        ks: ``(K + 1,)`` numbers of concepts removed, 0..K.
        top: ``(K + 1,)`` the chosen class's probability after removing the top-k concepts.
        random: ``(K + 1,)`` the same, removing k random concepts, averaged over the draws.
        random_draws: ``(draws, K + 1)`` each draw's curve.
    """

    ks: np.ndarray
    top: np.ndarray
    random: np.ndarray
    random_draws: np.ndarray

    @property
    def auc_top(self) -> float:
        """Normalised area under the top-k curve (lower: the top concepts matter more)."""
        return curve_auc(self.ks, self.top)

    @property
    def auc_random(self) -> float:
        """Normalised area under the random curve."""
        return curve_auc(self.ks, self.random)


def curve_auc(ks: np.ndarray, values: np.ndarray) -> float:
    """Area under ``values`` over ``ks`` rescaled to [0, 1] on the x axis (``sklearn.metrics.auc``)."""
    from sklearn.metrics import auc

    ks = np.asarray(ks, dtype=np.float64)
    if ks.size < 2:
        return float(values[0]) if len(values) else 0.0
    return float(auc((ks - ks[0]) / (ks[-1] - ks[0]), np.asarray(values, dtype=np.float64)))


def deletion_curve(embedding: np.ndarray, directions: np.ndarray, order: Sequence[int], classes: np.ndarray, chosen: int,
                   logit_scale: float, max_k: int, offset: np.ndarray | None = None) -> np.ndarray:
    """The chosen class's probability as the first 0..max_k concepts of ``order`` are projected out.

    Args:
        embedding: ``(D,)`` the (centred) image embedding the concepts explain.
        directions: ``(M, D)`` the (centred) concept directions.
        order: concept indices in the order they are removed.
        classes: ``(K, D)`` class text embeddings.
        chosen: the chosen class's row.
        logit_scale: the encoder's inverse temperature.
        max_k: the most concepts removed.
        offset: added back before rescoring (the image mean taken out before the decomposition), or ``None``.

    Returns:
        ``(max_k + 1,)`` probabilities; entry 0 is the unchanged decision.
    """
    directions = np.atleast_2d(np.asarray(directions, dtype=np.float64))
    order = list(order)[:max_k]
    values = []
    for k in range(max_k + 1):
        chosen_directions = directions[order[:k]] if k else np.zeros((0, directions.shape[1]))
        kept = remove_directions(embedding, chosen_directions)
        rescored = kept if offset is None else kept + np.asarray(offset, dtype=np.float64)
        values.append(softmax_scores(rescored, classes, logit_scale)[chosen])
    return np.asarray(values)


def deletion_curves(embedding: np.ndarray, directions: np.ndarray, contributions: np.ndarray, classes: np.ndarray, chosen: int,
                    logit_scale: float, max_k: int = 10, draws: int = 10, seed: int = 0,
                    offset: np.ndarray | None = None) -> DeletionCurves:
    """Deletion curves for the top-contributing concepts and for random concepts (seeded draws).

    Args:
        embedding, directions, classes, chosen, logit_scale, offset: as in :func:`deletion_curve`.
        contributions: ``(M,)`` concept contributions; the top-k are removed in decreasing order.
        max_k: curves run k = 0..max_k (capped at the bank size).
        draws: random orders averaged for the baseline.
        seed: the random orders' seed.

    Returns:
        :class:`DeletionCurves`.
    """
    count = np.atleast_2d(directions).shape[0]
    max_k = int(min(max_k, count))
    order = np.argsort(-np.asarray(contributions, dtype=np.float64), kind="stable")
    top = deletion_curve(embedding, directions, order, classes, chosen, logit_scale, max_k, offset)
    rng = np.random.default_rng(seed)
    random = np.stack([deletion_curve(embedding, directions, rng.permutation(count), classes, chosen, logit_scale, max_k, offset)
                       for _ in range(max(1, draws))])
    return DeletionCurves(np.arange(max_k + 1), top, random.mean(axis=0), random)
