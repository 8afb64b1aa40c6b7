"""After CAE training: class centroids, the code-space check (k-NN accuracy) and the run's ``index.html``."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from workbench.data.loaders import build_loader
from workbench.report import HtmlReport, RunFolder, fmt, image_strip, save_png
from workbench_plugins.counterfactual.models import ClassAssociationEmbedding


@torch.no_grad()
def class_codes_of(model: ClassAssociationEmbedding, dataset: Any, device: torch.device, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, float]:
    """Class codes ``(N, class_dim)``, labels ``(N,)`` and the mean reconstruction L1 of a dataset."""
    model.eval()
    codes, labels, errors = [], [], []
    for batch in build_loader(dataset, batch_size=batch_size, shuffle=False):
        if batch is None:
            continue
        images = batch["image"].to(device)
        class_code, individual = model.encode(images)
        errors.append((model.decode(class_code, individual) - images).abs().mean(dim=(1, 2, 3)).cpu())
        codes.append(class_code.float().cpu().numpy())
        labels.append(batch["label"].numpy())
    if not codes:
        return np.zeros((0, model.class_dim)), np.zeros((0,), dtype=np.int64), float("nan")
    return np.concatenate(codes), np.concatenate(labels).astype(np.int64), float(torch.cat(errors).mean())


def cae_evaluation(model: ClassAssociationEmbedding, train_set: Any, eval_set: Any, classes: Sequence[str], device: torch.device,
                   neighbours: int = 5) -> dict[str, Any]:
    """Fill ``model.class_centroids`` from the training codes and measure the held-out code space.

    Args:
        model: the trained CAE.
        train_set, eval_set: labelled datasets without augmentation.
        classes: the class names.
        device: where to run.
        neighbours: k of the k-NN classifier on class codes.

    Returns:
        ``knn_accuracy`` (k-NN on the training codes, scored on held-out codes; ``None`` without
        held-out images), ``reconstruction_l1`` (held-out mean |x - dec(enc(x))|), ``train_reconstruction_l1``
        and ``centroids`` (K x class_dim list).
    """
    from sklearn.neighbors import KNeighborsClassifier

    train_codes, train_labels, train_error = class_codes_of(model, train_set, device)
    centroids = np.stack([train_codes[train_labels == index].mean(axis=0) if (train_labels == index).any() else np.zeros(model.class_dim)
                          for index in range(len(classes))])
    model.class_centroids.copy_(torch.as_tensor(centroids, dtype=model.class_centroids.dtype))
    eval_codes, eval_labels, eval_error = class_codes_of(model, eval_set, device)
    metrics: dict[str, Any] = {"train_reconstruction_l1": train_error, "reconstruction_l1": None if np.isnan(eval_error) else eval_error,
                               "centroids": centroids.tolist(), "knn_accuracy": None}
    if len(eval_codes) and len(train_codes) >= neighbours:
        knn = KNeighborsClassifier(n_neighbors=neighbours).fit(train_codes, train_labels)
        metrics["knn_accuracy"] = float((knn.predict(eval_codes) == eval_labels).mean())
    return metrics


@torch.no_grad()
def write_cae_page(run: RunFolder, title: str, model: ClassAssociationEmbedding, dataset: Any, classes: Sequence[str], metrics: dict[str, Any],
                   history: Sequence[dict[str, float]], examples: int, device: torch.device) -> HtmlReport:
    """Write ``index.html``: metrics, the training curves and, per example, original | reconstruction | each class's centroid code.

    Returns:
        The written page.
    """
    page = HtmlReport(title, run.path)
    page.section("CAE training", lead=f"How the class-association autoencoder learned to split each image into a class code "
                                      f"({' vs '.join(classes)}) and an individual code: its held-out scores and training curves.")
    page.text(f"{fmt(metrics.get('steps', 0))} steps on {fmt(metrics.get('train_images', 0))} images. Held-out k-NN accuracy of the "
              f"class codes: {fmt(metrics.get('knn_accuracy'))}; reconstruction L1: {fmt(metrics.get('reconstruction_l1'))}."
              + (f" Stored as {metrics['stored_model']}." if metrics.get("stored_model") else ""))
    if history:
        page.history([dict(row) for row in history], name="cae-training-curves",
                     caption="Each logged generator and discriminator loss per step, learning rate last.")
    model.eval()
    figures = []
    for index in range(len(dataset)):
        if len(figures) >= examples:
            break
        item = dataset[index]
        if item is None:
            continue
        image = item["image"][None].to(device)
        class_code, individual = model.encode(image)
        tiles = [image, model.decode(class_code, individual)]
        tiles += [model.decode(model.class_centroids[target][None], individual) for target in range(len(classes))]
        captions = ["input", "reconstruction", *[f"as {name}" for name in classes]]
        strip = image_strip([(tile[0].float().cpu().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8) for tile in tiles], captions)
        path = save_png(run.file(f"examples/{len(figures):02d}.png"), strip)
        figures.append((path, f"{item['id']} (class {classes[int(item['label'])]})"))
    if figures:
        page.section("Examples", lead="Held-out images, each beside its reconstruction and its decoding with every class's "
                                      "centroid code: what the class code changes.")
        page.figures(figures)
    page.write()
    return page
