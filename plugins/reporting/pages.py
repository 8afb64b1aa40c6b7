"""index.html sections of the reporting jobs: image, answer, explanation, and the draft beside the edit with changes highlighted."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from workbench.report import HtmlReport, RunFolder, fmt, highlight_word_changes, save_png, to_rgb_uint8

_STYLE = ("<style>.edit-pair{display:flex;gap:16px;margin:8px 0}.edit-pair>div{flex:1;border:1px solid #ccc;padding:6px;font-size:13px}"
          "del{background:#fbb;text-decoration:line-through}ins{background:#bfb;text-decoration:none}"
          ".qa{font-size:13px;margin:4px 0}.note{color:#a40;font-size:12px}</style>")


class ReportPage(HtmlReport):
    """An :class:`~workbench.report.HtmlReport` that also takes ready-made HTML blocks (the highlighted diffs)."""

    def __init__(self, title: str, folder: str | Path):
        super().__init__(title, folder)
        self._styled = False

    def markup(self, block: str) -> "ReportPage":
        """Add a block of HTML as it is (callers escape every text they put in it)."""
        if not self._styled:
            block = _STYLE + block
            self._styled = True
        self._current().parts.append(block)
        return self


def highlight_changes(draft: str, edited: str) -> tuple[str, str]:
    """Word-level diff of a draft and its edit (:func:`workbench.report.highlight_word_changes`), as two HTML strings.

    Returns:
        ``(draft with removed words in <del>, edit with inserted words in <ins>)``, every word escaped.
    """
    return highlight_word_changes(draft, edited)


def edit_block(draft: str, edited: str, note: str = "") -> str:
    """The draft and the edit side by side, changes highlighted, with an optional note (e.g. "written from scratch").

    Give the draft as the decoder reads it (``ReportVocabulary.normalise``: lower case, WordPiece spacing), so that
    only real edits are highlighted, not the tokenizer's spelling.
    """
    left, right = highlight_changes(draft, edited)
    note_html = f'<div class="note">{html.escape(note)}</div>' if note else ""
    return (f'<div class="edit-pair"><div><b>draft</b><br>{left or "<i>(empty)</i>"}</div>'
            f"<div><b>edit</b><br>{right}{note_html}</div></div>")


def answer_block(question: str, answer: str, explanation: str, truth: str | None = None) -> str:
    """A question with the generated answer and explanation (and the reference, when known)."""
    reference = f" <span class='note'>reference: {html.escape(truth)}</span>" if truth else ""
    return (f"<div class='qa'><b>{html.escape(question)}</b> {html.escape(answer)}"
            f"{' &mdash; because ' + html.escape(explanation) if explanation else ''}{reference}</div>")


def save_thumbnail(run: RunFolder, relative: str, image: np.ndarray) -> Path:
    """Write an image (``(C, H, W)`` or ``(H, W)`` in display units) as a PNG in the run folder."""
    array = np.asarray(image)
    array = array[0] if array.ndim == 3 and array.shape[0] == 1 else (np.moveaxis(array, 0, -1) if array.ndim == 3 else array)
    return save_png(run.file(relative), to_rgb_uint8(array))


def write_metrics_table(page: ReportPage, metrics: Mapping[str, Any], keys: Sequence[str]) -> None:
    """One table row of the chosen metrics (missing ones left blank)."""
    page.table([{key: metrics.get(key, "") for key in keys}])


def _example_rows(evaluation: Any, limit: int) -> list[dict[str, Any]]:
    """Examples for the page: wrong or unfixed ones first, then the rest, at most ``limit`` images."""
    rows = list(evaluation.rows)
    rows.sort(key=lambda row: (row.get("correct", True) is not False and row.get("fixed") is not False, row.get("record_index", 0)))
    chosen, seen = [], set()
    for row in rows:
        if row["record_index"] in seen:
            continue
        seen.add(row["record_index"])
        chosen.append(row)
        if len(chosen) >= limit:
            break
    return chosen


def write_training_page(run: RunFolder, settings: Any, metrics: Mapping[str, Any], evaluation: Any, records: Sequence[Mapping[str, Any]],
                        history: Sequence[Mapping[str, float]], examples: int) -> Path:
    """The training run's index.html: training summary, held-out metrics, examples (errors first), config.

    Returns:
        The page's path.
    """
    from workbench.data.readers import read_image
    from workbench.errors import DataError

    page = ReportPage(f"Reporting {settings.model} on {metrics.get('encoder')}", run.path)
    stored = f" Stored as {metrics['stored_model']}." if metrics.get("stored_model") else ""
    task = "answer questions about each image and explain the answer" if settings.model == "explainer" else "edit draft reports"
    page.section("Training", lead=f"How the {settings.model} learned to {task} from {metrics.get('encoder')}'s image features: "
                                  "the training run and its loss curve.")
    page.text(f"{fmt(metrics.get('steps'))} steps on {fmt(metrics.get('train_items'))} items; "
              f"{fmt(metrics.get('skipped_records'))} records skipped (see skipped.csv).{stored}")
    if history:
        page.history([dict(row) for row in history], name="training-curves",
                     caption=f"Each logged training scalar per step, learning rate last (final loss {fmt(history[-1].get('loss'))}).")
    page.section("Held-out metrics", lead=f"How the {settings.model} scores on held-out images it never trained on.")
    flat = {key: value for key, value in metrics.items() if not isinstance(value, (dict, list))}
    page.table([{"metric": key, "value": value} for key, value in flat.items()])
    if isinstance(metrics.get("per_kind"), dict):
        page.text("By kind of question or injected error:")
        page.table([{"kind": kind, **values} for kind, values in metrics["per_kind"].items()])
    page.section("Examples (errors first)", lead="Held-out images the model got wrong first, then the rest: "
                 + ("each question with the generated answer, its explanation and the reference."
                    if settings.model == "explainer" else "each draft beside the model's edit, removed words struck out and added ones highlighted."))
    by_record: dict[int, list[dict[str, Any]]] = {}
    for row in evaluation.rows:
        by_record.setdefault(row["record_index"], []).append(row)
    for row in _example_rows(evaluation, examples):
        record = records[row["record_index"]]
        try:
            image, _ = read_image(record["image"])
            path = save_thumbnail(run, f"examples/{row['record_index']:05d}.png", image)
            page.figures([(path, str(record.get("id") or Path(record["image"]).name))])
        except DataError as error:
            page.text(f"image not shown: {error}")
        if settings.model == "explainer":
            page.markup("".join(answer_block(r["question"], r["answer"], r["explanation"], f"{r['true_answer']} because {r['true_explanation']}")
                                for r in by_record[row["record_index"]]))
        else:
            verdict = {True: "injected error fixed", False: "injected error NOT fixed", None: ""}[row.get("fixed")]
            judged = [f"{i + 1}: {v}" for i, v in enumerate(row.get("verdicts") or []) if v != "keep"]
            verdicts = f"; sentence verdicts: {', '.join(judged) or 'keep all'}" if row.get("verdicts") else ""
            page.markup(edit_block(row.get("draft_as_read", row["draft"]), row["edit"],
                                   f"{row['kind']}: {verdict}; {row['damaged']} correct sentence(s) changed{verdicts}"))
    config = run.path / "config.yaml"
    if config.exists():
        page.section("Config", lead="The resolved settings this run used (config.yaml), to repeat it exactly.").preformatted(config.read_text(encoding="utf-8"))
    return page.write()
