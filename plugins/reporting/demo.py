"""The ``reporting`` step of ``workbench demo``: an answer-and-explain decoder and a report editor on held-out chest phantoms.

Both decoders read the frozen encoder the ``contrastive-pretrain`` step stored, and train on the phantoms that step
wrote (its ``data.options``: a few hundred studies; the demo's own 48 studies leave too few for training and
testing). The contrastive step trains its encoder on the ``train`` and ``val`` splits, so the decoders train on
those and are scored on ``test``, which neither the encoder nor the decoders saw.

Its sizes and budgets are in ``configs/demo.yaml`` under ``options.reporting`` (see
:class:`~workbench_plugins.reporting.settings.ReportingDemoSettings`): ``data`` (shared by both jobs), ``explainer``
and ``editor`` (each job's own settings), and how many held-out studies and drafts the page shows. The step adds
only what the run decides (seed, device, folders, the encoder and its phantoms).

The page shows, for a few held-out studies, every question with the generated answer, its explanation and the
ground truth; the answer accuracy over all held-out questions beside the majority-answer baseline (each question
answered with its most frequent training answer: what a decoder that ignores the image scores); drafts with one
injected error beside their edits (changes highlighted); and how many injected errors the edits fixed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from workbench.config import merge_options


def majority_answers(items: Sequence[Any]) -> dict[str, str]:
    """Each question's most frequent answer.

    Args:
        items: :class:`~workbench_plugins.reporting.questions.QuestionItem` (anything with ``question`` and ``answer``).

    Returns:
        question -> its most frequent answer (ties: the answer seen first).
    """
    counts: dict[str, Counter] = {}
    for item in items:
        counts.setdefault(item.question, Counter())[item.answer] += 1
    return {question: answers.most_common(1)[0][0] for question, answers in counts.items()}


def majority_accuracy(train_items: Sequence[Any], eval_items: Sequence[Any]) -> float | None:
    """The accuracy on ``eval_items`` of answering each question with its most frequent answer in ``train_items``.

    The chance level of the answers: what a decoder scores that learned the answer frequencies and ignores the image.
    A question never asked in training counts as wrong.

    Returns:
        The share of ``eval_items`` answered right in ``[0, 1]``, ``None`` when there are none.
    """
    if not eval_items:
        return None
    majority = majority_answers(train_items)
    return sum(majority.get(item.question) == item.answer for item in eval_items) / len(eval_items)


def finding_rows(eval_items: Sequence[Any], rows: Sequence[Mapping[str, Any]], train_items: Sequence[Any]) -> list[dict[str, Any]]:
    """One table row per question (held-out count, accuracy, majority baseline), then one for all questions.

    Args:
        eval_items: the held-out question items, in the order of ``rows``.
        rows: the explainer evaluation's rows (``correct`` per item).
        train_items: the training question items (for the baseline).

    Returns:
        ``[{"question", "held-out questions", "answer accuracy", "majority baseline"}, ...]``.
    """
    table = []
    questions = list(dict.fromkeys(item.question for item in eval_items))
    for question in [*questions, None]:
        chosen = [(item, row) for item, row in zip(eval_items, rows) if question is None or item.question == question]
        table.append({"question": question or "all questions", "held-out questions": len(chosen),
                      "answer accuracy": sum(bool(row["correct"]) for _, row in chosen) / len(chosen),
                      "majority baseline": majority_accuracy(train_items, [item for item, _ in chosen])})
    return table


def shown_records(records: Sequence[Mapping[str, Any]], candidates: Sequence[int], count: int) -> list[int]:
    """The first ``count`` of ``candidates`` (record indices, in order) whose record has a positive label, then others.

    Returns:
        At most ``count`` record indices.
    """
    unique = list(dict.fromkeys(candidates))
    positive = [index for index in unique if any(_positive(value) for value in (records[index].get("labels") or {}).values())]
    return (positive + [index for index in unique if index not in positive])[:count]


def _positive(value: Any) -> bool:
    try:
        return float(value) == 1.0
    except (TypeError, ValueError):
        return False


def edit_kind_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The edits' figures per injected kind and overall: drafts, injected errors, fixed, correct sentences changed.

    Args:
        rows: the editor evaluation's rows (``kind``, ``fixed``: True/False, None for drafts left correct; ``damaged``).

    Returns:
        ``[{"injected error", "drafts", "errors fixed", "fix rate", "correct sentences changed"}, ...]``, the last row all kinds.
    """
    table = []
    kinds = sorted({str(row["kind"]) for row in rows})
    for kind in [*kinds, None]:
        chosen = [row for row in rows if kind is None or row["kind"] == kind]
        judged = [row for row in chosen if row["fixed"] is not None]
        fixed = sum(bool(row["fixed"]) for row in judged)
        table.append({"injected error": kind or "all", "drafts": len(chosen), "errors fixed": f"{fixed} of {len(judged)}",
                      "fix rate": fixed / len(judged) if judged else "", "correct sentences changed": sum(int(row["damaged"]) for row in chosen)})
    return table


def shown_edits(rows: Sequence[Mapping[str, Any]], count: int) -> list[Mapping[str, Any]]:
    """At most ``count`` drafts with an injected error, fixed or not: the first of each kind (in order of appearance), then the next ones.

    Args:
        rows: the editor evaluation's rows (``kind``; ``fixed`` is None for drafts left correct, which are not shown).

    Returns:
        The chosen rows, in their original order.
    """
    judged = [index for index, row in enumerate(rows) if row["fixed"] is not None]
    firsts = list({str(rows[index]["kind"]): index for index in reversed(judged)}.values())
    chosen = sorted(firsts, key=judged.index)[:count]
    chosen += [index for index in judged if index not in chosen][: count - len(chosen)]
    return [rows[index] for index in sorted(chosen)]


def demo_reporting(context: Any) -> None:
    """Train both decoders on the contrastive step's phantoms and encoder, show held-out answers and edits on the demo page.

    Leaves ``context.results["reporting"]``: ``answer_accuracy`` (all held-out questions), ``majority_answer_accuracy``,
    the editor's ``edit_fix_rate``, ``errors_fixed`` of ``injected_errors``, ``edit_damage_rate``, and both stored models.
    Skipped, with a note on the page, when the contrastive step stored no encoder.
    """
    from workbench.model_store import open_store
    from workbench_plugins.reporting.features import ReportingEncoder, encode_records
    from workbench_plugins.reporting.jobs.train import load_report_records, record_findings, run_report_train
    from workbench_plugins.reporting.questions import dataset_questions
    from workbench_plugins.reporting.settings import ReportingDemoSettings, ReportTrainSettings

    page = context.report
    page.section("Answers with explanations (reporting)", lead="Questions about held-out images answered from the image, each answer with the report sentence that explains it.")
    stored = getattr(context.results.get("contrastive-pretrain"), "stored", None)
    if not stored:
        page.text("skipped: the contrastive step stored no encoder")
        return
    demo = context.step_settings("reporting", ReportingDemoSettings, {})
    pretrain = context.options("contrastive-pretrain")
    root = context.run.path / "reporting"
    encoder_store = (pretrain.get("save") or {}).get("store")  # where the contrastive step put its encoder
    phantoms = {"dataset": "phantom-cxr", "root": str(context.run.path / "data" / "cxr-pretrain"),  # the contrastive step's phantoms
                "options": {"seed": context.settings.run.seed, **((pretrain.get("data") or {}).get("options") or {})}}
    own = {"run": context.run_values(root), "data": merge_options(phantoms, demo.data), "encoder": {"name": stored, "store": encoder_store}}

    def job_settings(model: str, section: dict[str, Any]) -> ReportTrainSettings:
        return context.step_settings("reporting", ReportTrainSettings, merge_options(own, {"model": model, "run": {"name": model}}),
                                     section=section)

    explainer, editor = job_settings("explainer", demo.explainer), job_settings("editor", demo.editor)
    builders, data = context.host.datasets.builders, explainer.data
    train_records = load_report_records(data, builders, root, data.train_split, data.max_train)
    eval_records = load_report_records(data, builders, root, data.eval_split, data.max_eval)
    encoder = ReportingEncoder.from_store(stored, open_store(encoder_store), device=str(context.device))
    encoded = (encode_records(encoder, train_records, data.image_key), encode_records(encoder, eval_records, data.image_key))
    shared = encoded if editor.data == data else None  # the frozen encoder's tokens, computed once for both jobs

    answered = run_report_train(explainer, builders, progress=False, encoded=encoded)
    edited = run_report_train(editor, builders, progress=False, encoded=shared)

    findings = record_findings(data, train_records)
    kept = set(encoded[1].kept)
    train_items = dataset_questions(train_records, findings, data.uncertain)
    eval_items = [item for item in dataset_questions(eval_records, findings, data.uncertain) if item.record_index in kept]
    answers, edits = answered.details["evaluation"], edited.details["evaluation"]
    metrics, edit_metrics = answered.metrics, edited.metrics
    baseline = majority_accuracy(train_items, eval_items)
    fixed = sum(row["fixed"] is True for row in edits.rows)
    context.results["reporting"] = {
        "answer_accuracy": metrics.get("answer_accuracy"), "majority_answer_accuracy": baseline, "questions": metrics.get("questions"),
        "presence_accuracy": metrics.get("presence_accuracy"), "main_accuracy": metrics.get("main_accuracy"),
        "explanation_bleu4": metrics.get("explanation_bleu4"), "edit_fix_rate": edit_metrics.get("edit_fix_rate"),
        "errors_fixed": fixed, "injected_errors": edit_metrics.get("injected_errors"), "edit_damage_rate": edit_metrics.get("edit_damage_rate"),
        "edit_bleu4": edit_metrics.get("edit_bleu4"), "draft_bleu4": edit_metrics.get("draft_bleu4"),
        "explainer": answered.stored, "editor": edited.stored,
    }
    context.record("reporting", {key: value for key, value in context.results["reporting"].items() if key not in ("explainer", "editor")})
    _answer_section(context, demo, stored, train_records, eval_records, eval_items, train_items, answers.rows, metrics, baseline, answered.steps)
    _edit_section(context, demo, edits.rows, edit_metrics, fixed, edited.steps)


def _answer_section(context: Any, demo: Any, encoder: str, train_records: Sequence[Mapping[str, Any]], eval_records: Sequence[Mapping[str, Any]],
                    eval_items: Sequence[Any], train_items: Sequence[Any], rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any],
                    baseline: float | None, steps: int) -> None:
    """Answers: the accuracy table against the majority baseline, then every question of a few held-out studies."""
    from workbench.data.readers import read_image
    from workbench_plugins.reporting.pages import save_thumbnail

    page = context.report
    page.text(f"Answer and explain (NLX-GPT style): a small decoder over the frozen encoder {encoder} reads a question and writes "
              f"\"<answer> because <explanation>\"; trained {steps} steps on {len(train_records)} phantoms' derived questions, scored on "
              f"all {metrics.get('questions')} questions of {len(eval_records)} held-out test phantoms. Answer accuracy "
              f"{_number(metrics.get('answer_accuracy'))} against {_number(baseline)} for the majority baseline (each question answered "
              f"with its most frequent training answer, the image ignored); explanations: BLEU-4 {_number(metrics.get('explanation_bleu4'))} "
              f"against the report sentence, {_number(metrics.get('consistency_rate'))} say what their answer says. A short demo "
              "training on a briefly pretrained encoder: findings its tokens barely carry stay at the baseline (table below).")
    page.table(finding_rows(eval_items, rows, train_items))
    by_record: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_record.setdefault(int(row["record_index"]), []).append(row)
    for index in shown_records(eval_records, list(by_record), demo.shown_studies):
        record = eval_records[index]
        name = str(record.get("id") or Path(str(record["image"])).stem)
        image, _ = read_image(record["image"])
        page.figures([(save_thumbnail(context.run, f"reporting/studies/{name}.png", image), f"held-out study {name}")])
        page.table([{"question": row["question"], "answer": row["answer"], "explanation": row["explanation"], "true answer": row["true_answer"],
                     "report sentence": row["true_explanation"], "answer right": "yes" if row["correct"] else "NO"}
                    for row in by_record[index]])


def _edit_section(context: Any, demo: Any, rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any], fixed: int, steps: int) -> None:
    """Edits: the figures per injected kind, then a few drafts beside their edits with the changes highlighted."""
    page = context.report.section("Report editing (reporting)", lead="Report drafts with one injected error beside the editor's version: red was taken out, green written in.")
    page.text(f"Report editing (after EditNet): a draft encoder and a copy decoder with sentence verdicts (keep, delete, rewrite), "
              f"trained {steps} steps to restore true reports from drafts with one injected error (side swapped, size changed, a finding "
              f"sentence dropped or invented). On one draft per held-out phantom the edits fixed {fixed} of {metrics.get('injected_errors')} "
              f"injected errors and changed {_number(metrics.get('edit_damage_rate'))} of the correct sentences; BLEU-4 against the true "
              f"report {_number(metrics.get('edit_bleu4'))} for the edits, {_number(metrics.get('draft_bleu4'))} for the drafts as they came. "
              "The IMPRESSION is never corrupted and restates each finding, so an error can be found from the text as well as the image.")
    page.table(edit_kind_rows(rows))
    for row in shown_edits(rows, demo.shown_edits):
        verdict = "fixed" if row["fixed"] else "NOT fixed"
        page.diff(row["draft_as_read"], row["edit"], titles=("draft with an injected error", "edit"),
                  note=f"injected error: {row['kind']}, {verdict}; {row['damaged']} correct sentence(s) changed. Red: taken out, green: written in.")


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
