"""The ``explain-vlm`` jobs: build a concept bank, explain one image, explain and score a manifest's images."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from rich.progress import track

from workbench.config import RunSettings
from workbench.data.manifests import read_manifest
from workbench.data.readers import read_image
from workbench.data.skipped import SkippedRecords
from workbench.errors import ConfigError, DataError
from workbench.report import HtmlReport, RunFolder, closes_run_logs
from workbench_plugins.vlm_explain.concepts import mine_concepts, read_concept_bank, write_concept_bank
from workbench.model_store import open_store
from workbench_plugins.vlm_explain.encoder import ExplainedEncoder
from workbench_plugins.vlm_explain.explain import Explainer, ImageExplanation
from workbench_plugins.vlm_explain.pages import write_image_section
from workbench_plugins.vlm_explain.metrics import aggregate_rows, report_sentence_for, score_record, write_summary_section
from workbench_plugins.vlm_explain.settings import ConceptSettings, DeletionSettings, ExplainSettings, MapSettings
from workbench_plugins.vlm_explain.zero_shot import mean_image_embedding

logger = logging.getLogger("workbench.vlm_explain")


def run_build_concepts(manifest: Path, out: Path, min_count: int = 10, max_words: int = 6, max_concepts: int = 200,
                       splits: Sequence[str] | None = None) -> tuple[Path, int]:
    """Mine a concept bank from a manifest's reports and write it as an editable text file.

    Args:
        manifest: a CSV/JSONL manifest whose records have ``report``.
        out: the bank file to write.
        min_count, max_words, max_concepts: see :func:`~.concepts.mine_concepts`.
        splits: only records with these ``split`` values (``None``: all); mine on the training reports to keep
            held-out reports out of the bank.

    Returns:
        ``(path written, number of concepts)``.

    Raises:
        ConfigError: no record has a report, or no concept is frequent enough.
    """
    records, _ = read_manifest(manifest, require=("report",), on_error="skip")
    reports = [str(record.get("report") or "") for record in records if splits is None or record.get("split") in splits]
    reports = [report for report in reports if report.strip()]
    if not reports:
        raise ConfigError(f"{manifest}: no record with a report{' in splits ' + ', '.join(splits) if splits else ''}")
    concepts = mine_concepts(reports, min_count=min_count, max_words=max_words, max_concepts=max_concepts)
    header = (f"Concept bank mined from {len(reports)} reports of {Path(manifest).name}"
              f"{' (splits ' + ', '.join(splits) + ')' if splits else ''} by `workbench explain-vlm concepts`\n"
              f"(min_count={min_count}, max_words={max_words}). One concept per line; '#' starts a comment.\n"
              "Edit freely: add descriptors, remove concepts you do not want explanations in.")
    return write_concept_bank(out, concepts, header), len(concepts)


def build_explainer(model: str, store: Path | None, bank: Path, classes: Sequence[str] | None, concepts: ConceptSettings,
                    deletion: DeletionSettings, maps: MapSettings, device: str = "auto", seed: int = 0,
                    reference_images: Sequence[np.ndarray] = ()) -> Explainer:
    """Load the encoder and the bank and make the :class:`Explainer` (the image mean from ``reference_images`` when centring).

    Raises:
        ConfigError / RegistryError: an unusable model, an empty bank, a class list of one, a model without patch tokens.
    """
    bank_concepts = read_concept_bank(bank)
    encoder = ExplainedEncoder.from_store(model, open_store(store), device=device)
    image_mean = mean_image_embedding(encoder, list(reference_images)) if concepts.centre_images and len(reference_images) else None
    return Explainer(encoder, bank_concepts, classes, concepts, deletion, maps, image_mean=image_mean, bank_source=str(bank), seed=seed)


def run_explain_image(image: Path, *, model: str, classes: Sequence[str] | None = None, report: str | None = None,
                      bank: Path = Path("configs/concepts_cxr.txt"), store: Path | None = None,
                      concepts: ConceptSettings | None = None, deletion: DeletionSettings | None = None, maps: MapSettings | None = None,
                      run_settings: RunSettings | None = None, frame: int | None = None) -> Path:
    """Explain one image file: decision, top concepts with regions, mutual knowledge, deletion chart, similarity maps.

    Args:
        image: any image file the workbench reads.
        model: ``name[:version]`` of a stored dual encoder.
        classes: zero-shot classes (at least two), or ``None``.
        report: a report (or sentence) to map the image-report similarity of, or ``None``.
        bank: the concept bank file.
        store: the model store folder (``None``: default).
        concepts, deletion, maps: settings sections (defaults when ``None``).
        run_settings: output root, run name, device, seed.
        frame: the frame of a multi-frame DICOM image.

    Returns:
        The path of the run's ``index.html``.

    Raises:
        ConfigError: neither classes nor report, an empty bank, a class list of one, a model without patch tokens.
        DataError: an unreadable image.
    """
    if not classes and not (report and report.strip()):
        raise ConfigError("give --classes (a zero-shot decision to explain) or --report (an image-report similarity to map)")
    run_settings = run_settings or RunSettings()
    concepts, deletion, maps = concepts or ConceptSettings(), deletion or DeletionSettings(), maps or MapSettings()
    pixels, _ = read_image(image, frame=frame)
    explainer = build_explainer(model, store, bank, list(classes) if classes else None, concepts, deletion, maps,
                                run_settings.device, run_settings.seed)
    explanation = explainer.explain(pixels, report=report)
    run = RunFolder.create("explain-vlm", run_settings.output_root, run_settings.name)
    page = HtmlReport(f"Explaining {explainer.encoder.ref} on {Path(image).name}", run.path)
    write_image_section(page, run, Path(image).name, pixels, explanation, top_k=concepts.top_k)
    run.write_metrics(image_metrics(str(image), explainer, explanation, concepts.top_k))
    return page.write()


def image_metrics(image: str, explainer: Explainer, explanation: ImageExplanation, top_k: int) -> dict[str, Any]:
    """The JSON record of one explained image (decision summary and each map's similarity)."""
    metrics: dict[str, Any] = {"image": image, "model": explainer.encoder.describe(), "concepts": len(explainer.space.concepts)}
    if explanation.decision is not None:
        metrics["decision"] = explanation.decision.summary(top_k)
    metrics["similarity_maps"] = [{"text": item.text, "similarity": item.similarity, "occlusion": item.occlusion is not None,
                                   "interaction_cam": item.cam is not None} for item in explanation.maps]
    metrics["notes"] = list(explanation.notes)
    return metrics


@dataclass
class ExplainedRecord:
    """One manifest record, explained: its record, image, explanation, score row and the texts mapped per box."""

    record: dict[str, Any]
    image: np.ndarray
    explanation: ImageExplanation
    row: dict[str, Any]
    box_texts: list[str] = field(default_factory=list)


def load_records(settings: ExplainSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The manifest's records in ``data.splits`` (records without a split count as ``test``), capped at ``data.max_images``.

    Returns:
        ``(chosen records, every good record)`` (the second for the reference images).

    Raises:
        ConfigError: no manifest, or no record in those splits.
    """
    if settings.data.manifest is None:
        raise ConfigError("data.manifest: give the manifest of the images to explain")
    records, problems = read_manifest(settings.data.manifest, on_error="skip")
    for line, reason in problems:
        logger.warning("%s line %s skipped: %s", settings.data.manifest, line, reason)
    chosen = [record for record in records if record.get("split", "test") in settings.data.splits]
    if not chosen:
        raise ConfigError(f"{settings.data.manifest}: no record with a split in {settings.data.splits}")
    return chosen[: settings.data.max_images or None], records


def reference_images(settings: ExplainSettings, records: Sequence[Mapping[str, Any]], skipped: SkippedRecords) -> list[np.ndarray]:
    """Images of ``data.reference_split`` (at most ``concepts.reference_images``) for the image mean; empty when not centring."""
    if not settings.concepts.centre_images:
        return []
    images = []
    for record in [r for r in records if r.get("split") == settings.data.reference_split][: settings.concepts.reference_images]:
        try:
            images.append(read_image(record.get(settings.data.image_key) or record["image"])[0])
        except DataError as error:
            skipped.add(record, error)
    if not images:
        raise ConfigError(f"concepts.centre_images: no readable image in split {settings.data.reference_split!r}")
    return images


def iter_explained(explainer: Explainer, records: Sequence[Mapping[str, Any]], settings: ExplainSettings,
                   skipped: SkippedRecords, progress: bool = True) -> Iterator[ExplainedRecord]:
    """Explain records one by one (a bad image is added to ``skipped`` and passed over).

    The first ``data.max_map_images`` images (all when ``None``) get similarity maps of the report sentence
    holding each box's phrase; the first ``examples`` also get the chosen class's map for the page.

    Yields:
        :class:`ExplainedRecord` per good record, in order.
    """
    map_budget = settings.data.max_map_images if settings.data.max_map_images is not None else len(records)
    for position, record in enumerate(track(records, description="explain-vlm", total=len(records)) if progress else records):
        path = record.get(settings.data.image_key) or record.get("image")
        try:
            image, _ = read_image(path)
        except DataError as error:
            skipped.add(record, error, file=str(path))
            continue
        box_texts = [report_sentence_for(str(record.get("report") or ""), box.get("phrase", "")) for box in record.get("boxes") or []]
        texts = [text for text in box_texts if text.strip()] if position < map_budget else []
        try:
            explanation = explainer.explain(image, texts=texts, sentence_maps=False, class_map=position < settings.examples)
        except DataError as error:  # e.g. an image of zero size after reading
            skipped.add(record, error, file=str(path))
            continue
        yield ExplainedRecord(dict(record), image, explanation,
                              score_record(record, explanation, settings.classes, settings.finding_keywords, box_texts,
                                           image.shape[-2:]), box_texts)


@dataclass
class BatchOutcome:
    """What ``explain-vlm evaluate`` produced: its run folder, metrics, one score row per image and the shown examples."""

    run: RunFolder
    metrics: dict[str, Any]
    rows: list[dict[str, Any]]
    examples: list[ExplainedRecord] = field(default_factory=list)


def pick_examples(items: Sequence[ExplainedRecord], count: int, source: str) -> list[ExplainedRecord]:
    """The images shown in full: the first ``count`` (``source="first"``) or the first ``count`` decided correctly (``"correct"``)."""
    if source == "correct":
        items = [item for item in items if item.row.get("correct")]
    return list(items[:count])


@closes_run_logs
def run_explain_batch(settings: ExplainSettings, progress: bool = True) -> BatchOutcome:
    """Explain a manifest's images, score the explanations, write ``metrics.json`` and ``index.html``.

    Returns:
        :class:`BatchOutcome`; metrics as in :func:`~.scoring.aggregate_rows` plus settings.
    """
    run = RunFolder.create("explain-vlm", settings.run.output_root, settings.run.name)
    run.attach_log()
    run.save_settings(settings)
    skipped = SkippedRecords(run.skipped_csv)
    chosen, records = load_records(settings)
    explainer = build_explainer(settings.model.name, settings.model.store, settings.concepts.bank, settings.classes, settings.concepts,
                                settings.deletion, settings.maps, settings.run.device, settings.run.seed,
                                reference_images(settings, records, skipped))
    page = HtmlReport(f"Explaining {explainer.encoder.ref}", run.path)
    rows, candidates = [], []
    for item in iter_explained(explainer, chosen, settings, skipped, progress):
        rows.append(item.row)
        if settings.examples_from == "correct" and item.row.get("correct") or settings.examples_from == "first" and len(candidates) < settings.examples:
            candidates.append(item)
    examples = pick_examples(candidates, settings.examples, settings.examples_from)
    if settings.examples_from == "correct":  # only the first images got the chosen class's map: draw it for those shown
        examples = [ExplainedRecord(item.record, item.image, explainer.explain(item.image, texts=[t for t in item.box_texts if t.strip()],
                                                                               sentence_maps=False, class_map=True), item.row, item.box_texts)
                    for item in examples]
    metrics = dict(aggregate_rows(rows), model=explainer.encoder.describe(), concepts=len(explainer.space.concepts),
                   skipped_records=len(skipped), examples_from=settings.examples_from)
    run.write_metrics({"explain_vlm": metrics})
    write_summary_section(page, metrics)
    if examples and settings.examples_from == "correct":
        page.text(f"Shown below: the first {len(examples)} images whose decision was correct (chosen from the correct ones; "
                  "the accuracy above is over every explained image with findings).")
    for item in examples:
        write_image_section(page, run, str(item.record.get("id")), item.image, item.explanation, item.record.get("boxes") or [],
                            settings.concepts.top_k, extra_rows=item.row.get("boxes", []))
    page.section("Config", lead="The resolved settings this run used (config.yaml), to repeat it exactly.").preformatted((run.path / "config.yaml").read_text(encoding="utf-8"))
    page.write()
    return BatchOutcome(run, metrics, rows, examples)
