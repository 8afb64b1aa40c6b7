"""Evaluate a dual encoder on held-out pairs: retrieval, zero-shot and linear probe.

The encoder is frozen and in eval mode; features are computed once per split
and every metric reads them. Results are plain dicts that go to
``metrics.json``; :func:`write_evaluation_pages` turns them into index.html
sections with retrieval examples (image + top-5 reports).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from workbench.data.loaders import build_loader
from workbench.report import HtmlReport, RunFolder, fmt, image_strip, save_png, to_rgb_uint8
from workbench.train import move_to_device
from workbench_plugins.contrastive.metrics import auroc_per_column, labels_matrix, linear_probe, retrieval_metrics, zero_shot_scores
from workbench_plugins.contrastive.models import ReportImageDualEncoder
from workbench_plugins.contrastive.settings import EvalSettings
from workbench_plugins.contrastive.text import duplicate_groups, negation_prompts

logger = logging.getLogger("workbench.contrastive")


@dataclass
class EncodedPairs:
    """Frozen features of a split.

    Attributes:
        image_features: ``(N, D)`` L2-normalised image embeddings.
        text_features: ``(N, D)`` L2-normalised report embeddings (row i is image i's report).
        texts: the N report texts as the text tower saw them.
        ids: the N record ids.
        labels: the N label dicts (finding -> 0/1; empty when unknown).
        images: the N model inputs ``(3, S, S)`` kept for pictures (only the first few).
    """

    image_features: torch.Tensor
    text_features: torch.Tensor
    texts: list[str]
    ids: list[str]
    labels: list[dict[str, int]]
    images: list[torch.Tensor]


@torch.no_grad()
def encode_pairs(model: ReportImageDualEncoder, dataset: Any, device: torch.device, batch_size: int = 64, keep_images: int = 8) -> EncodedPairs:
    """Encode every usable pair of ``dataset`` (bad records are skipped by the dataset).

    Args:
        model: the dual encoder (put in eval mode here).
        dataset: a pair dataset from ``data.pair_dataset`` (items: ``image`` (3, S, S), ``report_text``...).
        device: where to compute.
        batch_size: pairs per forward pass.
        keep_images: how many input images to keep for the report pages.

    Returns:
        The :class:`EncodedPairs`.
    """
    model.eval()
    loader = build_loader(dataset, batch_size=batch_size, shuffle=False)
    images, texts, kept, ids, labels = [], [], [], [], []
    text_features = []
    for batch in loader:
        if batch is None:
            continue
        pixels = move_to_device(batch["image"], device)
        images.append(model.encode_image(pixels).float().cpu())
        token_ids = model.tokenize(list(batch["report_text"])).to(device)
        text_features.append(model.encode_text(token_ids).float().cpu())
        texts.extend(batch["report_text"])
        ids.extend(str(item) for item in batch.get("id", [""] * len(pixels)))
        batch_labels = batch.get("labels")
        labels.extend(_label_dicts(batch_labels, len(pixels)))
        if len(kept) < keep_images:
            kept.extend(pixels[: keep_images - len(kept)].cpu())
    if not images:
        dimension = model.embed_dim
        return EncodedPairs(torch.zeros(0, dimension), torch.zeros(0, dimension), [], [], [], [])
    return EncodedPairs(torch.cat(images), torch.cat(text_features), texts, ids, labels, kept)


def _label_dicts(batch_labels: Any, count: int) -> list[dict[str, int]]:
    """Collated labels (a dict of (B,) tensors, or a list of dicts) -> one dict per sample."""
    if batch_labels is None:
        return [{} for _ in range(count)]
    if isinstance(batch_labels, Mapping):
        return [{name: int(values[index]) for name, values in batch_labels.items()} for index in range(count)]
    return [dict(item or {}) for item in batch_labels]


@torch.no_grad()
def prompt_features(model: ReportImageDualEncoder, findings: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean positive and negative prompt embeddings per finding: two ``(F, D)`` L2-normalised tensors."""
    positives, negatives = [], []
    for finding in findings:
        positive_texts, negative_texts = negation_prompts(finding)
        for texts, bucket in ((positive_texts, positives), (negative_texts, negatives)):
            features = model.encode_text(model.tokenize(list(texts)).to(device)).float().mean(dim=0)
            bucket.append(torch.nn.functional.normalize(features, dim=-1).cpu())
    return torch.stack(positives), torch.stack(negatives)


def finding_names(pairs: EncodedPairs, wanted: Sequence[str] | None) -> list[str]:
    """The findings to score: ``wanted``, else every label name seen, in sorted order."""
    if wanted:
        return list(wanted)
    return sorted({name for labels in pairs.labels for name in labels})


def evaluate_encoder(
    model: ReportImageDualEncoder,
    held_out: EncodedPairs,
    train: EncodedPairs | None,
    settings: EvalSettings,
    device: torch.device,
    findings: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics the settings ask for.

    Args:
        model: the encoder (for prompt embeddings and its logit scale).
        held_out: features of the evaluation split.
        train: features of the training split (linear probe only).
        settings: which metrics.
        device: where prompts are encoded.
        findings: label names (default: all seen).
        seed: linear-probe subsampling seed.

    Returns:
        ``{"pairs": N, "retrieval": {...}, "zeroshot": {finding: auroc, "mean": ...},
        "linear_probe": {"1%": {...}, ...}}`` (sections present as asked and possible).
    """
    metrics: dict[str, Any] = {"pairs": len(held_out.texts)}
    if not held_out.texts:
        return metrics
    names = finding_names(held_out, findings)
    if settings.retrieval:
        metrics["retrieval"] = retrieval_metrics(held_out.image_features, held_out.text_features, duplicate_groups(held_out.texts))
    labelled = bool(names) and any(held_out.labels)
    if settings.zeroshot and labelled:
        positive, negative = prompt_features(model, names, device)
        scale = float(model.logit_scale.exp().clamp(max=100).item())
        scores = zero_shot_scores(held_out.image_features, positive, negative, scale).numpy()
        per_finding = auroc_per_column(scores, labels_matrix(held_out.labels, names), names)
        per_finding["mean"] = float(np.nanmean(list(per_finding.values())))
        metrics["zeroshot"] = per_finding
    if settings.linear_probe and labelled and train is not None and train.texts:
        metrics["linear_probe"] = linear_probe(
            train.image_features.numpy(), labels_matrix(train.labels, names),
            held_out.image_features.numpy(), labels_matrix(held_out.labels, names),
            names, fractions=settings.probe_fractions, seed=seed,
        )
    return metrics


def _display_image(normalised: torch.Tensor, mean: Sequence[float], std: Sequence[float], min_side: int = 256) -> np.ndarray:
    """Undo the model's normalisation: ``(3, S, S)`` -> uint8 ``(S', S', 3)``, enlarged to at least ``min_side`` to be seen."""
    pixels = normalised.float() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    if pixels.shape[-1] < min_side:
        pixels = torch.nn.functional.interpolate(pixels[None], size=(min_side, min_side), mode="bilinear", align_corners=False)[0]
    return to_rgb_uint8(pixels.clamp(0, 1).permute(1, 2, 0).numpy(), 0.0, 1.0)


def write_evaluation_pages(report: HtmlReport, run: RunFolder, metrics: Mapping[str, Any], held_out: EncodedPairs,
                           mean: Sequence[float], std: Sequence[float], examples: int, title: str = "Evaluation") -> None:
    """Add the metric tables and retrieval examples to ``report``; pictures go to ``run/retrieval/``.

    Args:
        report: the page being built.
        run: the run folder (PNG files are written into it).
        metrics: from :func:`evaluate_encoder`.
        held_out: the encoded evaluation split (its kept images are shown).
        mean, std: the model's normalisation, to show images as they are.
        examples: how many retrieval examples.
        title: the section title.
    """
    report.section(title, lead="How well the encoder matches held-out images to their reports: retrieval recall, zero-shot "
                   "finding detection from prompts, and linear probes on its frozen image features.")
    report.text(f"{fmt(metrics.get('pairs', 0))} held-out image-report pairs.")
    retrieval = metrics.get("retrieval")
    if retrieval:
        report.text("Recall@k: the share of held-out images whose own report is among the k closest reports (and of reports "
                    "whose image is among the k closest images); chance is what a random ranking scores.")
        rows = [{"direction": direction, **{f"R@{k}": retrieval[f"{prefix}_R@{k}"] for k in (1, 5, 10)}}
                for direction, prefix in (("image -> report", "i2t"), ("report -> image", "t2i"), ("chance", "chance"))]
        report.table(rows)
    if metrics.get("zeroshot"):
        report.text("Zero-shot AUROC per finding (positive vs negated prompts):")
        report.table([{"finding": name, "AUROC": value} for name, value in metrics["zeroshot"].items()])
    if metrics.get("linear_probe"):
        report.text("Linear probe AUROC (logistic regression on frozen image features) by share of training labels:")
        probe = metrics["linear_probe"]
        report.table([{"labels": share, **values} for share, values in probe.items()])
    if not retrieval or not held_out.images:
        return
    similarity = held_out.image_features @ held_out.text_features.T
    figures = []
    for index, image in enumerate(held_out.images[:examples]):
        top = similarity[index].topk(min(5, similarity.shape[1]))
        lines = [f"true report: {held_out.texts[index]}", ""]
        for rank, (score, target) in enumerate(zip(top.values.tolist(), top.indices.tolist()), start=1):
            mark = "*" if held_out.texts[target] == held_out.texts[index] else " "
            lines.append(f"{rank}.{mark} ({score:.2f}) {held_out.texts[target]}")
        path = save_png(run.file(f"retrieval/{held_out.ids[index] or index}.png"), image_strip([_display_image(image, mean, std)]))
        figures.append((path, held_out.ids[index] if held_out.ids else str(index), "\n".join(lines)))
    report.section("Retrieval examples", lead=f"{len(figures)} held-out images, each with the five reports the encoder ranks closest to it.")
    report.text("Beside each image: its true report, then the five closest reports with their similarity (* = its own report or an identical one).")
    for path, name, caption in figures:
        report.figures([(path, name)], aside=caption)
