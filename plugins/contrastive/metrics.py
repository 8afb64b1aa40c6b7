"""Evaluation of a report-paired encoder: retrieval, zero-shot and linear probe.

Retrieval counts a hit when any report identical to the query's own is in the
top k: chest reports repeat ("No acute cardiopulmonary process."), and
penalising the model for ranking a word-for-word copy first would measure
the data, not the model.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score


def recall_at_k(similarity: torch.Tensor, query_groups: torch.Tensor, target_groups: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Recall@k of a similarity matrix.

    Args:
        similarity: ``(Q, T)`` scores, higher is closer.
        query_groups: ``(Q,)`` group id of each query's true target.
        target_groups: ``(T,)`` group id of each target (identical reports share one).
        ks: the cut-offs.

    Returns:
        ``{k: fraction of queries with a target of their group in the top k}``.
    """
    ranking = similarity.argsort(dim=1, descending=True)
    hits_by_rank = target_groups[ranking] == query_groups[:, None]  # (Q, T)
    return {k: float(hits_by_rank[:, : min(k, similarity.shape[1])].any(dim=1).float().mean()) for k in ks}


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, groups: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Image-to-text and text-to-image recall@k on paired features.

    Args:
        image_features: ``(N, D)`` L2-normalised.
        text_features: ``(N, D)`` L2-normalised; row i is image i's report.
        groups: ``(N,)`` report group ids (see ``text.duplicate_groups``).
        ks: cut-offs.

    Returns:
        ``{"i2t_R@1": ..., "t2i_R@1": ..., ..., "chance_R@10": ...}``; chance is
        the expected recall of a random ranking with the same duplicates.
    """
    similarity = image_features.float() @ text_features.float().T
    metrics: dict[str, float] = {}
    for k, value in recall_at_k(similarity, groups, groups, ks).items():
        metrics[f"i2t_R@{k}"] = value
    for k, value in recall_at_k(similarity.T, groups, groups, ks).items():
        metrics[f"t2i_R@{k}"] = value
    counts = torch.bincount(groups)[groups].double()  # targets sharing each query's group
    n = len(groups)
    for k in ks:
        # P(no matching target among k random draws without replacement)
        miss = torch.ones(n, dtype=torch.float64)
        for step in range(min(k, n)):
            miss *= torch.clamp((n - counts - step) / (n - step), min=0)
        metrics[f"chance_R@{k}"] = float((1 - miss).mean())
    return metrics


def zero_shot_scores(image_features: torch.Tensor, positive_features: torch.Tensor, negative_features: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Per-finding probability that the finding is present.

    Args:
        image_features: ``(N, D)`` L2-normalised.
        positive_features: ``(F, D)`` mean embedding of each finding's positive prompts (L2-normalised).
        negative_features: ``(F, D)`` the same for the negated prompts.
        logit_scale: the model's (exponentiated) logit scale.

    Returns:
        ``(N, F)`` softmax probability of the positive prompt over {positive, negative}.
    """
    positive = image_features @ positive_features.T
    negative = image_features @ negative_features.T
    logits = torch.stack([negative, positive], dim=-1) * logit_scale
    return logits.softmax(dim=-1)[..., 1]


def auroc_per_column(scores: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """AUROC of each column of ``scores`` ``(N, F)`` against ``labels`` ``(N, F)`` in {0, 1, -1 = unknown}.

    Unknown labels (uncertain or unlisted in the source) are left out of their
    column; a column with one class only gives NaN.
    """
    result = {}
    for column, name in enumerate(names):
        known = labels[:, column] >= 0
        truth = labels[known, column]
        result[name] = float(roc_auc_score(truth, scores[known, column])) if 0 < truth.sum() < len(truth) else float("nan")
    return result


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    names: Sequence[str],
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Logistic regression per finding on frozen features, at several label fractions.

    Args:
        train_features: ``(N, D)``; train_labels: ``(N, F)`` in {0, 1, -1 = unknown}.
        test_features: ``(M, D)``; test_labels: ``(M, F)`` in {0, 1, -1 = unknown}.
        names: the F finding names.
        fractions: share of the training labels used (at least 2 per class kept
            so every probe can be fitted).
        seed: the subsampling seed.

    Returns:
        ``{"1%": {"nodule": auroc, ..., "mean": auroc}, "10%": ..., "100%": ...}``.
    """
    rng = np.random.default_rng(seed)
    results: dict[str, dict[str, float]] = {}
    for fraction in fractions:
        count = max(int(round(fraction * len(train_features))), 1)
        scores = np.zeros((len(test_features), len(names)))
        for column in range(len(names)):
            labels = train_labels[:, column]
            known = np.flatnonzero(labels >= 0)  # unknown (-1) labels are not training targets
            chosen = known[rng.permutation(len(known))[:count]]
            # a probe needs both classes: top up with two of each when the subsample lacks one
            for value in (0, 1):
                if (labels[chosen] == value).sum() < 2:
                    extra = np.flatnonzero(labels == value)[:2]
                    chosen = np.union1d(chosen, extra)
            if len(np.unique(labels[chosen])) < 2:
                scores[:, column] = 0.5
                continue
            probe = LogisticRegression(max_iter=2000, C=1.0)
            probe.fit(train_features[chosen], labels[chosen])
            scores[:, column] = probe.predict_proba(test_features)[:, 1]
        per_finding = auroc_per_column(scores, test_labels, names)
        per_finding["mean"] = float(np.nanmean(list(per_finding.values())))
        results[f"{fraction:.0%}"] = per_finding
    return results


def labels_matrix(records_labels: Sequence[Mapping[str, int]], names: Sequence[str], missing: int = -1) -> np.ndarray:
    """Stack per-record label dicts into an ``(N, F)`` int array in the order of ``names``.

    A name absent from a record's dict (an uncertain MIMIC label, an unlisted IU
    problem) becomes ``missing`` (-1, "unknown", by default), not a negative.
    """
    return np.array([[int(labels.get(name, missing)) for name in names] for labels in records_labels], dtype=np.int64).reshape(len(records_labels), len(names))
