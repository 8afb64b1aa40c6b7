"""``workbench report --image FILE [--question ...] [--draft FILE] --model NAME`` and its batch form ``--manifest FILE``.

Each stored reporting model says in its record what it is (``extra.kind``:
``explainer`` or ``editor``), which encoder it reads (``extra.encoder``) and
which findings it was trained to ask about. Questions default to every
trained finding plus "What is the main finding?". A draft is edited when an
editor is given; an empty draft is written from scratch (and the page says
so); a draft longer than the editor's context is cut, and the cut tokens are
counted on the page and in ``metrics.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from workbench.config import RunSettings
from workbench.data.manifests import read_manifest
from workbench.data.readers import read_image
from workbench.data.skipped import SkippedRecords
from workbench.devices import select_device
from workbench.model_store import open_store
from workbench.errors import ConfigError, DataError
from workbench.model_records import ModelRecord, parse_ref
from workbench.model_store import ModelStore
from workbench.report import RunFolder
from workbench_plugins.reporting.features import ReportingEncoder
from workbench_plugins.reporting.findings import presence_question
from workbench_plugins.reporting.generate import edit_reports, explain
from workbench_plugins.reporting.models import TASK, ReportDecoder
from workbench_plugins.reporting.pages import ReportPage, answer_block, edit_block, save_thumbnail
from workbench_plugins.reporting.questions import MAIN_QUESTION
from workbench_plugins.reporting.vocab import ReportVocabulary

logger = logging.getLogger("workbench.reporting")


@dataclass
class LoadedDecoder:
    """A stored reporting model ready to run: the decoder, its vocabulary, record and encoder."""

    model: ReportDecoder
    vocab: ReportVocabulary
    record: ModelRecord
    encoder: ReportingEncoder

    @property
    def kind(self) -> str:
        """``explainer`` or ``editor``."""
        return str(self.record.extra.get("kind") or ("editor" if self.model.copy else "explainer"))


def load_decoder(reference: str, store: ModelStore, device: str = "auto") -> LoadedDecoder:
    """Rebuild a stored reporting model and fetch the encoder its record names.

    Raises:
        RegistryError: unknown name/version.
        ConfigError: the stored model is not a reporting model, or its encoder cannot be found.
    """
    name, version = parse_ref(reference)
    record = store.resolve(name, version)
    if record.task != TASK:
        raise ConfigError(f"{record.ref} has task {record.task!r}; `workbench report` needs a model of task {TASK!r}")
    model, record = store.load(name, record.version, device=select_device(device))
    model.eval()
    vocab = ReportVocabulary(record.config["vocab_ids"])
    encoder_ref = str(record.extra.get("encoder") or "")
    if not encoder_ref:
        raise ConfigError(f"{record.ref}: its record names no encoder (extra.encoder)")
    encoder_store = store if parse_ref(encoder_ref)[0] in store.names() else open_store(record.extra.get("encoder_store") or None)
    encoder = ReportingEncoder.from_store(encoder_ref, encoder_store, device=device)
    return LoadedDecoder(model, vocab, record, encoder)


@dataclass
class ReportCase:
    """One image to report on: its file, questions, draft (``None``: no editing asked) and id."""

    image: str
    questions: list[str] = field(default_factory=list)
    draft: str | None = None
    id: str = ""
    frame: int | None = None  # of a multi-frame DICOM image


def read_draft(path: Path) -> str:
    """A draft report file's text (``""`` for an empty file).

    Raises:
        DataError: the file cannot be read as UTF-8 text (naming it).
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read the draft report: {error}") from error


def _default_questions(decoder: LoadedDecoder) -> list[str]:
    return [presence_question(name) for name in decoder.record.extra.get("findings") or []] + [MAIN_QUESTION]


def report_case(case: ReportCase, decoders: Sequence[LoadedDecoder], beam_size: int = 1) -> dict[str, Any]:
    """Answer, explain and edit for one image.

    Returns:
        ``{"id", "image", "answers": [{"question", "answer", "explanation", "model"}], "edit": {...} | None}``.

    Raises:
        DataError: unreadable image, or an image the encoder cannot take (naming the file).
        ConfigError: a draft without an editor.
    """
    pixels, _ = read_image(case.image, frame=case.frame)
    result: dict[str, Any] = {"id": case.id or Path(case.image).stem, "image": case.image, "answers": [], "edit": None, "pixels": pixels}
    editors = [d for d in decoders if d.kind == "editor"]
    if case.draft is not None and not editors:
        raise ConfigError("a draft was given but no editor model: add --model <a stored editor>")
    for decoder in decoders:
        prepared = decoder.encoder.prepare(pixels, case.image)
        tokens, pooled = decoder.encoder.encode(prepared[None])
        if decoder.kind == "explainer":
            questions = case.questions or _default_questions(decoder)
            outputs = explain(decoder.model, decoder.vocab, tokens.expand(len(questions), -1, -1), pooled.expand(len(questions), -1), questions,
                              beam_size)
            result["answers"] += [{"question": q, "answer": o.answer, "explanation": o.explanation, "model": decoder.record.ref}
                                  for q, o in zip(questions, outputs)]
        else:  # the editor: no draft or an empty one is written from scratch
            draft = case.draft or ""
            edit = edit_reports(decoder.model, decoder.vocab, tokens, pooled, [draft], beam_size)[0]
            notes = []
            if edit.from_scratch:
                notes.append("the draft was empty: the report was written from scratch")
            if edit.truncated_tokens:
                notes.append(f"the draft was longer than the editor's context: {edit.truncated_tokens} tokens were cut off")
            if edit.verdicts:
                changed = [f"{i + 1}: {v}" for i, v in enumerate(edit.verdicts) if v != "keep"]
                notes.append("sentence verdicts: " + (", ".join(changed) if changed else "every draft sentence kept"))
            # The draft and the edit are compared in the decoder's written form (lower case, WordPiece spacing).
            result["edit"] = {"draft": draft, "draft_as_read": decoder.vocab.normalise(draft), "edited": decoder.vocab.normalise(edit.text),
                              "from_scratch": edit.from_scratch, "truncated_tokens": edit.truncated_tokens, "notes": notes,
                              "verdicts": list(edit.verdicts), "model": decoder.record.ref}
    return result


def _page_section(page: ReportPage, run: RunFolder, result: dict[str, Any], index: int) -> None:
    path = save_thumbnail(run, f"images/{index:04d}.png", result["pixels"])
    wanted = " and ".join(part for part, present in (("the answers to its questions", result["answers"]),
                                                      ("the edit of its draft report", result["edit"] is not None)) if present)
    page.section(str(result["id"]), lead=f"The image {Path(result['image']).name}" + (f" with {wanted}." if wanted else "."))
    page.figures([(path, Path(result["image"]).name)])
    if result["answers"]:
        page.markup("".join(answer_block(a["question"], a["answer"], a["explanation"]) for a in result["answers"]))
    if result["edit"] is not None:
        page.markup(edit_block(result["edit"]["draft_as_read"], result["edit"]["edited"], "; ".join(result["edit"]["notes"])))


def run_report(cases: Sequence[ReportCase], models: Sequence[str], *, store: Path | None = None, beam_size: int = 1,
               run_settings: RunSettings | None = None, skipped_ok: bool = False) -> Path:
    """Report on images with stored models; write images, answers, edits, ``metrics.json`` and ``index.html``.

    Args:
        cases: the images (one for ``--image``, many for ``--manifest``).
        models: stored reporting models (``name[:version]``): explainers and/or an editor.
        store: the model store folder (``None``: default).
        beam_size: 1 greedy, more for beam search.
        run_settings: output root, run name and device.
        skipped_ok: batch form: a case that fails is listed in ``skipped.csv`` and the others go on.

    Returns:
        The path of the run's ``index.html``.

    Raises:
        ConfigError: no model, or a draft without an editor.
        DataError: (single image) unreadable image or one the encoder cannot take, naming the file.
    """
    if not models:
        raise ConfigError("give at least one stored reporting model with --model NAME")
    run_settings = run_settings or RunSettings()
    model_store = open_store(store)
    decoders = [load_decoder(reference, model_store, run_settings.device) for reference in models]
    run = RunFolder.create("report", run_settings.output_root, run_settings.name)
    skipped = SkippedRecords(run.skipped_csv)
    page = ReportPage(f"Reports by {', '.join(d.record.ref for d in decoders)}", run.path)
    results = []
    for index, case in enumerate(cases):
        try:
            result = report_case(case, decoders, beam_size)
        except DataError as error:
            if not skipped_ok:
                raise
            skipped.add({"id": case.id, "image": case.image}, error)
            continue
        _page_section(page, run, result, index)
        results.append({key: value for key, value in result.items() if key != "pixels"})
    if skipped_ok:
        page.section("Skipped", lead="The images that could not be reported on.").text(f"{len(skipped)} of {len(cases)} images skipped (see skipped.csv).")
    run.write_metrics({"models": [d.record.ref for d in decoders], "results": results, "skipped": len(skipped),
                       "truncated_drafts": sum(1 for r in results if r["edit"] and r["edit"]["truncated_tokens"])})
    return page.write()


def manifest_cases(path: Path) -> list[ReportCase]:
    """Cases from a CSV/JSONL manifest: ``image``; optional ``question`` (or ``questions``, a list), ``draft`` (text) or ``draft_file``.

    Raises:
        ManifestError / DataError: an unreadable manifest or draft file (named).
    """
    cases = []
    for record in read_manifest(path):
        questions = record.get("questions") or ([record["question"]] if record.get("question") else [])
        draft = record.get("draft")
        if record.get("draft_file"):
            draft = read_draft(Path(record["draft_file"]))
        cases.append(ReportCase(str(record["image"]), [str(q) for q in questions], None if draft is None else str(draft),
                                str(record.get("id") or "")))
    return cases
