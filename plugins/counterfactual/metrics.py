"""Classification metrics (AUROC, accuracy, confusion matrix) from scikit-learn, and batched prediction."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score
from torch import nn

from workbench.data.loaders import build_loader


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """AUROC, accuracy and the confusion matrix of class probabilities.

    Args:
        labels: ``(N,)`` true class indices.
        probabilities: ``(N, K)`` predicted class probabilities (rows sum to 1).
        classes: the K class names.

    Returns:
        ``n``, ``accuracy``, ``auroc`` (binary: of the second class; more classes: one-vs-rest macro;
        ``None`` when a class is missing from ``labels``), ``auroc_note`` when it is ``None``,
        ``confusion`` (K x K list, rows = truth, columns = prediction), ``classes`` and ``support``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    count = len(classes)
    if labels.size == 0:
        return {"n": 0, "accuracy": None, "auroc": None, "auroc_note": "no images", "confusion": [[0] * count for _ in range(count)],
                "classes": list(classes), "support": [0] * count}
    predicted = probabilities.argmax(axis=1)
    result: dict[str, Any] = {
        "n": int(labels.size),
        "accuracy": float(accuracy_score(labels, predicted)),
        "confusion": confusion_matrix(labels, predicted, labels=list(range(count))).tolist(),
        "classes": list(classes),
        "support": np.bincount(labels, minlength=count).tolist(),
    }
    present = np.unique(labels)
    if len(present) < count:
        missing = [classes[index] for index in range(count) if index not in present]
        result["auroc"], result["auroc_note"] = None, f"AUROC undefined: no {', '.join(missing)} images in this split"
    elif count == 2:
        result["auroc"] = float(roc_auc_score(labels, probabilities[:, 1]))
    else:
        result["auroc"] = float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=list(range(count))))
    return result


@torch.no_grad()
def predict(model: nn.Module, dataset: Any, device: torch.device, batch_size: int = 32) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Class probabilities of every usable item of a labelled dataset.

    Args:
        model: a classifier ``(B, C, S, S) -> (B, K)`` logits (put in eval mode here).
        dataset: a dataset of ``{"id", "image", "label"}`` items (bad ones skipped).
        device: where to run.
        batch_size: images per forward pass.

    Returns:
        ``(ids, labels (N,), probabilities (N, K))``.
    """
    model.eval()
    loader = build_loader(dataset, batch_size=batch_size, shuffle=False)
    ids: list[str] = []
    labels, probabilities = [], []
    for batch in loader:
        if batch is None:
            continue
        logits = model(batch["image"].to(device)).float()
        probabilities.append(torch.softmax(logits, dim=1).cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
        ids.extend(str(item) for item in batch["id"])
    if not ids:
        return [], np.zeros((0,), dtype=np.int64), np.zeros((0, 0))
    return ids, np.concatenate(labels).astype(np.int64), np.concatenate(probabilities)
