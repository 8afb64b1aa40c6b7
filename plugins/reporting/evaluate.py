"""Held-out evaluation of the two decoders: answers, explanations, faithfulness, edits.

Faithfulness asks whether the finding an explanation names is the one the
image shows where a localisation source points (see
:mod:`workbench_plugins.reporting.faithful`: a grounding head's heatmap of the
explanation, or the record's finding masks when no heatmap is at hand). The
source is named in the metrics (``faithfulness_source``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from workbench_plugins.reporting.corrupt import Corruption
from workbench_plugins.reporting.datasets import EditPair, make_edit_pairs
from workbench_plugins.reporting.features import ImageTokens
from workbench_plugins.reporting.findings import join_report, report_sentences
from workbench_plugins.reporting.generate import edit_reports, explain
from workbench_plugins.reporting.metrics import (
    EditTotals, bleu4, explanation_consistent, named_positive_findings, rouge_l, same_answer, score_edit,
)
from workbench_plugins.reporting.faithful import Judge, mask_judge
from workbench_plugins.reporting.models import ReportDecoder
from workbench_plugins.reporting.questions import dataset_questions
from workbench_plugins.reporting.verdicts import FOLLOW_BELOW
from workbench_plugins.reporting.vocab import ReportVocabulary

@dataclass
class Evaluation:
    """Metrics and per-item rows (for pages) of one evaluation."""

    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def _rows_of(tokens: ImageTokens) -> dict[int, int]:
    return {record_index: row for row, record_index in enumerate(tokens.kept)}


def evaluate_explainer(model: ReportDecoder, vocab: ReportVocabulary, tokens: ImageTokens, records: Sequence[Mapping[str, Any]],
                       findings: Sequence[str] | None, uncertain: str = "skip", beam_size: int = 1, max_new_tokens: int = 48,
                       judge: Judge | None = None, judge_name: str = "finding masks") -> Evaluation:
    """Answer every derived question about the held-out images and score the answers and explanations.

    Args:
        model: the explainer (eval mode).
        vocab: its vocabulary.
        tokens: cached tokens of ``records`` (``tokens.kept`` indexes them).
        records: the held-out records.
        findings: the findings asked about (``None``: every label).
        uncertain: how CheXpert's -1 is read.
        beam_size, max_new_tokens: decoding.
        judge: faithfulness judge (default: the records' finding masks).
        judge_name: what the judge uses, for the metrics.

    Returns:
        An :class:`Evaluation`: ``answer_accuracy`` (all questions), ``presence_accuracy``, ``main_accuracy``,
        ``explanation_bleu4``, ``explanation_rouge_l`` (against the report sentence), ``consistency_rate``
        (the explanation says what the answer says), ``faithfulness_rate`` (over explanations naming a finding),
        ``faithfulness_source``, ``faithfulness_rate_masks`` (the named finding has a mask: the finding is in the image
        at all, whatever the source), ``questions``.
    """
    rows_of = _rows_of(tokens)
    masks = mask_judge(records)
    judge = judge or masks
    items = [item for item in dataset_questions(records, findings, uncertain) if item.record_index in rows_of]
    index = torch.tensor([rows_of[item.record_index] for item in items], dtype=torch.long)
    outputs = explain(model, vocab, tokens.tokens[index], tokens.pooled[index], [item.question for item in items], beam_size, max_new_tokens)
    names = list(findings) if findings is not None else sorted({item.finding for item in items if item.finding})
    rows, right, consistent, faithful, faithful_masks = [], [], [], [], []
    for item, output in zip(items, outputs):
        correct = same_answer(output.answer, vocab.normalise(item.answer))
        right.append(correct)
        consistent.append(explanation_consistent(output.answer, output.explanation, item.finding, item.kind))
        named = named_positive_findings(output.explanation, names)
        verdict = judge(item.record_index, output.explanation, named) if named else None
        if verdict is not None:
            faithful.append(verdict)
            faithful_masks.append(masks(item.record_index, output.explanation, named))
        rows.append({"record_index": item.record_index, "question": item.question, "answer": output.answer, "explanation": output.explanation,
                     "true_answer": vocab.normalise(item.answer), "true_explanation": vocab.normalise(item.explanation), "correct": correct,
                     "kind": item.kind, "faithful": verdict})
    presence = [r["correct"] for r in rows if r["kind"] == "presence"]
    main = [r["correct"] for r in rows if r["kind"] == "main"]
    hypotheses = [r["explanation"] for r in rows]
    references = [r["true_explanation"] for r in rows]
    metrics = {
        "answer_accuracy": _mean(right), "presence_accuracy": _mean(presence), "main_accuracy": _mean(main),
        "explanation_bleu4": bleu4(hypotheses, references), "explanation_rouge_l": rouge_l(hypotheses, references),
        "consistency_rate": _mean(consistent), "faithfulness_rate": _mean(faithful), "faithfulness_checked": len(faithful),
        "faithfulness_source": judge_name, "faithfulness_rate_masks": _mean(faithful_masks), "questions": len(rows), "images": len(tokens), "beam_size": beam_size,
    }
    per_finding = {}
    for name in names:
        chosen = [r["correct"] for r, item in zip(rows, items) if item.kind == "presence" and item.finding == name]
        if chosen:
            per_finding[name] = _mean(chosen)
    metrics["presence_accuracy_per_finding"] = per_finding
    return Evaluation(metrics, rows)


def evaluate_editor(model: ReportDecoder, vocab: ReportVocabulary, tokens: ImageTokens, records: Sequence[Mapping[str, Any]],
                    findings: Sequence[str], seed: int, kinds: Sequence[str], beam_size: int = 1, keep_share: float = 0.1,
                    drafts: Sequence[str] | None = None, follow_below: float = FOLLOW_BELOW) -> Evaluation:
    """Edit held-out drafts (one corrupted, or kept correct, per image) and score fixes, damage, BLEU-4 and ROUGE-L.

    Args:
        model: the editor (eval mode).
        vocab: its vocabulary.
        tokens: cached tokens of ``records``.
        records: the held-out records.
        findings: the findings corruptions touch.
        seed: the evaluation drafts' seed (kept apart from training's).
        kinds: corruption kinds.
        beam_size: decoding.
        keep_share: share of drafts left correct (their edits count only towards damage).
        drafts: given drafts (e.g. prior reports) instead of corrupted ones: then only BLEU/ROUGE are scored.
        follow_below: editors with a verdict head: see :func:`~workbench_plugins.reporting.generate.edit_reports`.

    Returns:
        An :class:`Evaluation`: ``edit_fix_rate``, ``edit_damage_rate``, ``edit_bleu4``, ``edit_rouge_l`` (edit vs truth),
        ``draft_bleu4``, ``draft_rouge_l`` (draft vs truth, the do-nothing baseline), ``per_kind``.
    """
    rows_of = _rows_of(tokens)
    if drafts is None:
        pairs = make_edit_pairs(records, rows_of, findings, seed, variants=1, keep_share=keep_share, empty_share=0.0, kinds=kinds)
    else:
        pairs = [EditPair(rows_of[i], Corruption("prior", str(drafts[i] or ""), join_report(report_sentences(str(records[i].get("report") or "")))))
                 for i in range(len(records)) if i in rows_of]
    index = torch.tensor([pair.row for pair in pairs], dtype=torch.long)
    edits = edit_reports(model, vocab, tokens.tokens[index], tokens.pooled[index], [pair.corruption.draft for pair in pairs], beam_size,
                         follow_below=follow_below)
    totals = EditTotals()
    rows = []
    for pair, edit in zip(pairs, edits):
        score = score_edit(pair.corruption, edit.text, vocab.normalise)
        if drafts is None:
            totals.add(score)
        rows.append({"row": pair.row, "record_index": tokens.kept[pair.row], "kind": pair.corruption.kind, "draft": pair.corruption.draft,
                     "draft_as_read": vocab.normalise(pair.corruption.draft),
                     "edit": vocab.normalise(edit.text), "truth": vocab.normalise(pair.corruption.truth), "fixed": score.fixed,
                     "damaged": score.damaged, "truncated_tokens": edit.truncated_tokens, "verdicts": list(edit.verdicts),
                     "decoded": edit.decoded})
    truths = [r["truth"] for r in rows]
    metrics: dict[str, Any] = totals.aggregate() if drafts is None else {}
    metrics.update({
        "edit_bleu4": bleu4([r["edit"] for r in rows], truths), "edit_rouge_l": rouge_l([r["edit"] for r in rows], truths),
        "draft_bleu4": bleu4([vocab.normalise(r["draft"]) for r in rows], truths),
        "draft_rouge_l": rouge_l([vocab.normalise(r["draft"]) for r in rows], truths),
        "drafts_truncated": sum(r["truncated_tokens"] > 0 for r in rows), "beam_size": beam_size,
    })
    return Evaluation(metrics, rows)


def _mean(values: Sequence[bool]) -> float | None:
    return float(sum(bool(v) for v in values) / len(values)) if values else None
