"""Scoring explanations against known truth (the phantoms' findings and boxes), per image and over a run.

- A decision is correct when the chosen class is one of the image's findings.
- Its top concept is correct when it names the chosen finding: it contains one
  of the class's keywords (``finding_keywords``; default the class name's last
  word, "pleural effusion" -> "effusion").
- Two references for it: the concept with the largest image-side weight alone (no class margin: is the image's
  own decomposition about the finding?) and the share of the bank's concepts that name the class (a random concept's
  chance). The contribution multiplies the weight by the concept's class margin, so a bank holding the class names
  favours them: the weight-only number says how much of the answer comes from the image.
- Deletion: the areas under the top-k and random deletion curves (lower is a
  stronger effect on the decision).
- Similarity maps: the share of each map's positive mass inside the finding's
  box, beside the box's share of the image (what a uniform map would score).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from workbench.report import HtmlReport, fmt
from workbench_plugins.vlm_explain.explain import ImageExplanation, report_sentences
from workbench_plugins.vlm_explain.similarity_maps import box_area_fraction, energy_in_box


def finding_key(name: str) -> str:
    """``"Pleural effusion"`` / ``"pleural_effusion"`` -> ``"pleural_effusion"``."""
    return "_".join(str(name).strip().lower().replace("-", " ").replace("_", " ").split())


def class_keywords(class_name: str, finding_keywords: Mapping[str, Sequence[str]]) -> list[str]:
    """The words naming a class: ``finding_keywords`` under the class's key, else its name's last word."""
    key = finding_key(class_name)
    for name, words in finding_keywords.items():
        if finding_key(name) == key and words:
            return [str(word).lower() for word in words]
    return [key.split("_")[-1]]


def names_class(concept: str, class_name: str, finding_keywords: Mapping[str, Sequence[str]]) -> bool:
    """Whether ``concept`` contains one of the class's keywords (as a word prefix, any case)."""
    text = concept.lower()
    return any(re.search(rf"\b{re.escape(word)}", text) for word in class_keywords(class_name, finding_keywords))


def report_sentence_for(report: str, phrase: str) -> str:
    """The report sentence holding ``phrase`` (any case), else the phrase itself."""
    target = " ".join(str(phrase).split()).lower()
    for sentence in report_sentences(report):
        if target and target in " ".join(sentence.split()).lower():
            return sentence
    return " ".join(str(phrase).split())


def score_record(record: Mapping[str, Any], explanation: ImageExplanation, classes: Sequence[str],
                 finding_keywords: Mapping[str, Sequence[str]], box_texts: Sequence[str], size: Sequence[int]) -> dict[str, Any]:
    """One image's scores.

    Args:
        record: the manifest record (``findings``, ``boxes`` where known).
        explanation: its explanation (with a decision).
        classes: the zero-shot classes.
        finding_keywords: see :func:`class_keywords`.
        box_texts: the text mapped for each box (the sentence holding its phrase).
        size: ``(H, W)`` of the image.

    Returns:
        ``{"id", "findings", "decision", "probability", "correct", "top_concept", "top_concept_correct",
        "top_concept_names_present", "top_weight_concept", "top_weight_concept_correct", "chance_concept_correct",
        "mutual_knowledge", "top_k_overlap", "deletion_auc_topk", "deletion_auc_random",
        "boxes": [{"category", "text", "box_area", "energy_occlusion", "energy_cam"}]}``; correctness fields are
        ``None`` for an image without findings.
    """
    findings = [finding_key(name) for name in record.get("findings") or []]
    decision = explanation.decision
    row: dict[str, Any] = {"id": str(record.get("id")), "findings": findings}
    if decision is not None:
        chosen = decision.chosen_class
        top = decision.top_concepts(1)
        concept = top[0]["concept"] if top else ""
        correct = finding_key(chosen) in findings if findings else None
        heaviest = decision.concepts[int(np.argmax(decision.image_weights))] if decision.image_weights.max() > 0 else ""
        row.update({
            "decision": chosen, "probability": float(decision.probabilities[decision.chosen]), "correct": correct,
            "top_concept": concept, "top_weight_concept": heaviest,
            "top_weight_concept_correct": (bool(heaviest) and names_class(heaviest, chosen, finding_keywords)) if correct else None,
            "chance_concept_correct": (float(np.mean([names_class(c, chosen, finding_keywords) for c in decision.concepts]))
                                       if correct else None),
            "top_concept_correct": (bool(concept) and names_class(concept, chosen, finding_keywords)) if correct else None,
            "top_concept_names_present": (bool(concept) and any(names_class(concept, name, finding_keywords) for name in findings
                                                                 if any(finding_key(c) == name for c in classes))) if correct else None,
            "mutual_knowledge": decision.mutual["score"], "top_k_overlap": decision.mutual["top_k_overlap"],
            "deletion_auc_topk": decision.deletion.auc_top, "deletion_auc_random": decision.deletion.auc_random,
        })
    maps = {item.text: item for item in explanation.maps}
    boxes = []
    for box, text in zip(record.get("boxes") or [], box_texts):
        item = maps.get(" ".join(text.split()))
        if item is None:
            continue
        boxes.append({"category": finding_key(box.get("category") or "all"), "text": text,
                      "box_area": box_area_fraction(box, tuple(size)),
                      "energy_occlusion": energy_in_box(item.occlusion, box) if item.occlusion is not None else None,
                      "energy_cam": energy_in_box(item.cam, box) if item.cam is not None else None})
    row["boxes"] = boxes
    return row


def _mean(values: Sequence[Any]) -> float | None:
    kept = [float(value) for value in values if value is not None]
    return float(np.mean(kept)) if kept else None


def aggregate_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Run-level scores from :func:`score_record` rows.

    Returns:
        ``images``, ``images_with_findings``, ``decision_accuracy``, ``correct_decisions``, ``top_concept_correct``
        (share of correct decisions whose top concept names the chosen finding), ``top_concept_names_present``,
        ``top_weight_concept_correct`` and ``chance_concept_correct`` (its two references),
        ``deletion_auc_topk``, ``deletion_auc_random``, ``deletion_topk_below_random`` (share of images),
        ``mutual_knowledge``, ``top_k_overlap``, ``similarity_energy_in_box`` (``occlusion``, ``interaction_cam``,
        ``box_area``, ``boxes``) and ``per_finding`` (the same per chosen / box finding).
    """
    decided = [row for row in rows if "decision" in row]
    labelled = [row for row in decided if row.get("correct") is not None]
    correct = [row for row in labelled if row["correct"]]
    boxes = [box for row in rows for box in row.get("boxes", [])]
    metrics: dict[str, Any] = {
        "images": len(rows), "images_with_findings": len(labelled),
        "decision_accuracy": _mean([float(row["correct"]) for row in labelled]), "correct_decisions": len(correct),
        "top_concept_correct": _mean([float(row["top_concept_correct"]) for row in correct]),
        "top_concept_names_present": _mean([float(row["top_concept_names_present"]) for row in correct]),
        "top_weight_concept_correct": _mean([float(row["top_weight_concept_correct"]) for row in correct]),
        "chance_concept_correct": _mean([row["chance_concept_correct"] for row in correct]),
        "deletion_auc_topk": _mean([row["deletion_auc_topk"] for row in decided]),
        "deletion_auc_random": _mean([row["deletion_auc_random"] for row in decided]),
        "deletion_topk_below_random": _mean([float(row["deletion_auc_topk"] < row["deletion_auc_random"]) for row in decided]),
        "mutual_knowledge": _mean([row["mutual_knowledge"] for row in decided]),
        "top_k_overlap": _mean([row["top_k_overlap"] for row in decided]),
        "similarity_energy_in_box": {"occlusion": _mean([box["energy_occlusion"] for box in boxes]),
                                     "interaction_cam": _mean([box["energy_cam"] for box in boxes]),
                                     "box_area": _mean([box["box_area"] for box in boxes]), "boxes": len(boxes)},
    }
    per_finding: dict[str, dict[str, Any]] = defaultdict(dict)
    for name in sorted({row["decision"] for row in correct} | {finding for row in labelled for finding in row["findings"]}):
        key = finding_key(name)
        with_finding = [row for row in labelled if key in row["findings"]]
        chosen = [row for row in correct if finding_key(row["decision"]) == key]
        finding_boxes = [box for box in boxes if box["category"] == key]
        per_finding[key] = {
            "images": len(with_finding), "decision_recall": _mean([float(finding_key(row["decision"]) == key) for row in with_finding]),
            "correct_decisions": len(chosen), "top_concept_correct": _mean([float(row["top_concept_correct"]) for row in chosen]),
            "top_weight_concept_correct": _mean([float(row["top_weight_concept_correct"]) for row in chosen]),
            "energy_occlusion": _mean([box["energy_occlusion"] for box in finding_boxes]),
            "energy_cam": _mean([box["energy_cam"] for box in finding_boxes]),
            "box_area": _mean([box["box_area"] for box in finding_boxes]), "boxes": len(finding_boxes),
        }
    metrics["per_finding"] = dict(per_finding)
    return metrics


def write_summary_section(page: HtmlReport, metrics: Mapping[str, Any]) -> None:
    """The run's summary and per-finding tables on ``page``."""
    images = f"{fmt(metrics['images'])} image{'' if metrics['images'] == 1 else 's'}"
    page.section("Summary", lead=f"How faithful and how right the concept explanations were over {images}: "
                                 "whether the decision and its top concept name the true finding, and whether removing the "
                                 "top concepts lowers the decision more than removing random ones.")
    energy = metrics["similarity_energy_in_box"]

    def shown(value: Any) -> Any:
        return "n/a" if value is None else value

    page.text(f"{images}; {fmt(metrics['images_with_findings'])} with findings, decided correctly: "
              f"{fmt(metrics['correct_decisions'])}. Top concept names the finding on {fmt(metrics['top_concept_correct'])} of the "
              "correct decisions. Deletion AUC (chosen class's probability as concepts are projected out): top-k "
              f"{fmt(metrics['deletion_auc_topk'])}, random {fmt(metrics['deletion_auc_random'])}.")
    page.table([{"metric": key, "value": shown(metrics[key])} for key in (
        "decision_accuracy", "top_concept_correct", "top_concept_names_present", "top_weight_concept_correct", "chance_concept_correct",
        "deletion_auc_topk", "deletion_auc_random", "deletion_topk_below_random", "mutual_knowledge", "top_k_overlap")]
        + [{"metric": f"energy in box: {key}", "value": shown(value)} for key, value in energy.items()])
    if metrics["per_finding"]:
        page.text("Per finding:")
        page.table([{"finding": name, **{key: shown(value) for key, value in values.items()}}
                    for name, values in metrics["per_finding"].items()])
    else:
        page.text("No explained image had a finding, so nothing is scored per finding.")
