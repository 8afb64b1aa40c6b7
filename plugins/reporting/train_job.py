"""``workbench report train``: the answer-and-explain decoder or the report editor on a frozen stored encoder.

The encoder is frozen, so every image is encoded once per run and the
decoder trains on the cached tokens in the shared
:class:`~workbench.train.Trainer` (resume, progress, checkpoints,
TensorBoard). Then it is evaluated on the held-out split, stored with task
``reporting`` (its record names the encoder and holds the vocabulary in its
config), and the run's ``metrics.json`` and ``index.html`` are written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from workbench.checkpoints import seed_everything
from workbench.data.loaders import build_loader
from workbench.data.skipped import SkippedRecords
from workbench.dual_encoder import open_store
from workbench.errors import ConfigError
from workbench.jobs import TrainOutcome, build_records, split_records, start_job
from workbench.report import RunFolder
from workbench.train import Trainer
from workbench_plugins.reporting.corrupt import Corruption
from workbench_plugins.reporting.datasets import IGNORE, EditDataset, EditPair, ExplainDataset, drop_images, make_edit_pairs
from workbench_plugins.reporting.evaluate import Evaluation, evaluate_editor, evaluate_explainer
from workbench_plugins.reporting.faithful import choose_judge
from workbench_plugins.reporting.features import ImageTokens, ReportingEncoder, encode_records
from workbench_plugins.reporting.findings import SIDE_WORDS, SIZE_WORDS, join_report, label_key, presence_question, report_sentences
from workbench_plugins.reporting.models import (
    EDITOR_FACTORY, EXPLAINER_FACTORY, TASK, ReportDecoder, reporting_editor, reporting_explainer, sequence_loss, verdict_loss,
    weighted_sequence_loss,
)
from workbench_plugins.reporting.questions import MAIN_QUESTION, dataset_questions, negative_template, positive_template
from workbench_plugins.reporting.pages import write_training_page
from workbench_plugins.reporting.settings import ReportDataSettings, ReportTrainSettings
from workbench_plugins.reporting.vocab import ReportVocabulary, minilm_word_embeddings

logger = logging.getLogger("workbench.reporting")


def load_report_records(data: ReportDataSettings, builders: Any, output_root: Path, splits: Sequence[str], cap: int | None,
                        skipped: SkippedRecords | None = None) -> list[dict[str, Any]]:
    """Records with a report from the configured builder, in ``splits``, the image taken from ``data.image_key``.

    Raises:
        ConfigError: unknown builder, or no record with a report in these splits.
    """
    records = build_records(data.dataset, data.root, data.options, builders, output_root, skipped)
    chosen = [dict(record, image=record.get(data.image_key) or record.get("image"))
              for record in split_records(records, splits, default="train") if str(record.get("report") or "").strip()]
    if not chosen:
        raise ConfigError(f"no record of {data.dataset} with a report has a split in {list(splits)}")
    return chosen[: cap or None]


def record_findings(data: ReportDataSettings, records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The findings to ask about: the configured ones, else every label name of the records (``no_finding`` left out)."""
    if data.findings is not None:
        return [label_key(name) for name in data.findings]
    names = {label_key(name) for record in records for name in (record.get("labels") or {})}
    return sorted(names - {"no_finding"})


def vocabulary_texts(findings: Sequence[str]) -> list[str]:
    """Texts every vocabulary holds besides the training text: the questions and templates for ``findings``, side and size words."""
    texts = [MAIN_QUESTION, "no finding because", " ".join(SIDE_WORDS), " ".join(SIZE_WORDS), "FINDINGS: IMPRESSION:"]
    for name in findings:
        texts += [presence_question(name), positive_template(name), negative_template(name), "yes because no because"]
    return texts


def decoder_config(settings: ReportTrainSettings, vocab: ReportVocabulary, tokens: ImageTokens) -> dict[str, Any]:
    """The stored model's config (the factory's keyword arguments)."""
    config: dict[str, Any] = {"vocab_ids": list(vocab.wordpiece_ids), "token_dim": int(tokens.tokens.shape[-1]),
                              "pooled_dim": int(tokens.pooled.shape[-1]), "image_tokens": int(tokens.tokens.shape[1]),
                              **settings.decoder.model_dump(exclude={"minilm_embeddings", "draft_layers"})}
    if settings.model == "editor":
        config["draft_layers"] = settings.decoder.draft_layers
    return config


def _trimmed(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Items are padded to the longest in the dataset; cut each batch to its own longest sequence and draft.
    length = int((batch["targets"] != IGNORE).nonzero()[:, 1].max()) + 1
    trimmed = dict(batch, input_ids=batch["input_ids"][:, :length], targets=batch["targets"][:, :length])
    if "draft_ids" in batch:
        draft = int((batch["draft_ids"] != 0).sum(1).max())
        trimmed.update(draft_ids=batch["draft_ids"][:, :draft], draft_extended=batch["draft_extended"][:, :draft],
                       changed=batch["changed"][:, :length])
        if "verdict_labels" in batch:
            trimmed["verdict_labels"] = batch["verdict_labels"][:, :draft]
    return trimmed


@dataclass
class ReportTrainOutcome(TrainOutcome):
    """What ``report train`` produced: a :class:`~workbench.jobs.TrainOutcome` with the evaluation and the model."""

    evaluation: Evaluation | None = None
    model: ReportDecoder | None = None
    vocab: ReportVocabulary | None = None


def run_report_train(settings: ReportTrainSettings, builders: Any, *, resume: Path | None = None, progress: bool = True,
                     encoded: tuple[ImageTokens, ImageTokens] | None = None) -> ReportTrainOutcome:
    """Train, evaluate and store one reporting decoder (see the module docstring).

    Args:
        settings: the job's settings.
        builders: the host's dataset-builder catalog.
        resume: a run folder to continue from its latest checkpoint.
        progress: show progress bars.
        encoded: the train and held-out records' cached tokens, when the caller already has them (the benchmark).

    Returns:
        The :class:`ReportTrainOutcome`.
    """
    start = start_job(settings, "report-train", resume)
    run, skipped, context = start.run, start.skipped, start.context
    output_root = Path(settings.run.output_root)
    data = settings.data
    train_records = load_report_records(data, builders, output_root, data.train_split, data.max_train, skipped)
    eval_records = load_report_records(data, builders, output_root, data.eval_split, data.max_eval, skipped)
    findings = record_findings(data, train_records)
    store = open_store(settings.encoder.store)
    encoder = ReportingEncoder.from_store(settings.encoder.name, store, device=str(context.device))
    if encoded is None:
        encoded = (encode_records(encoder, train_records, "image", skipped=skipped, progress=progress),
                   encode_records(encoder, eval_records, "image", skipped=skipped, progress=progress))
    train_tokens, eval_tokens = encoded
    rows = {record_index: row for row, record_index in enumerate(train_tokens.kept)}
    seed_everything(settings.run.seed)
    if settings.model == "explainer":
        items = dataset_questions(train_records, findings, data.uncertain)
        vocab = ReportVocabulary.from_texts([item.question for item in items] + [item.target for item in items] + vocabulary_texts(findings))
        dataset: Any = ExplainDataset(items, train_tokens.tokens, train_tokens.pooled, rows, vocab, settings.decoder.max_length)
        factory, build = EXPLAINER_FACTORY, reporting_explainer
        extra_vocab = 0
    else:
        pairs = _edit_pairs(settings, train_records, rows, findings)
        vocab = ReportVocabulary.from_texts([str(r.get("report") or "") for r in train_records] + vocabulary_texts(findings))
        dataset = EditDataset(pairs, train_tokens.tokens, train_tokens.pooled, vocab, settings.decoder.max_length, settings.decoder.max_length,
                              verdicts=settings.decoder.verdict)
        factory, build = EDITOR_FACTORY, reporting_editor
        extra_vocab = dataset.extra_vocab
    logger.info("%d training items on %d images, vocabulary of %d word pieces", len(dataset), len(train_tokens), len(vocab))
    config = decoder_config(settings, vocab, train_tokens)
    model = build(**config)
    if settings.decoder.minilm_embeddings:
        model.init_word_embeddings(minilm_word_embeddings(vocab.wordpiece_ids))
    model = model.to(context.device)

    changed_weight = float(settings.edit.changed_weight) if settings.model == "editor" else 1.0
    verdict_weight = float(settings.edit.verdict_weight)
    image_dropout = float(settings.edit.image_dropout) if settings.model == "editor" else 0.0

    def step(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = _trimmed(batch)
        if image_dropout:
            batch["tokens"], batch["pooled"] = drop_images(batch["tokens"], batch["pooled"], image_dropout)
        verdict_logits = None
        if "verdict_labels" in batch:
            log_probs, verdict_logits = module(batch["tokens"], batch["pooled"], batch["input_ids"], batch["draft_ids"], batch["draft_extended"],
                                               extra_vocab, with_verdicts=True)
        else:
            log_probs = module(batch["tokens"], batch["pooled"], batch["input_ids"], batch.get("draft_ids"), batch.get("draft_extended"),
                               extra_vocab)
        if "changed" in batch and changed_weight != 1.0:
            weights = 1.0 + (changed_weight - 1.0) * batch["changed"].float()
            loss = weighted_sequence_loss(log_probs, batch["targets"], weights)
        else:
            loss = sequence_loss(log_probs, batch["targets"])
        if verdict_logits is not None:
            loss = loss + verdict_weight * verdict_loss(verdict_logits, batch["verdict_labels"], settings.edit.verdict_class_weights)
        return {"loss": loss}

    loader = build_loader(dataset, batch_size=settings.train.batch_size, shuffle=True, seed=settings.run.seed, drop_last=True)
    trainer = Trainer(model, step, loader, settings.train, context, seed=settings.run.seed, precision=settings.run.precision,
                      checkpoint_dir=run.checkpoint_dir, tensorboard_dir=run.tensorboard_dir, progress=progress)
    result = trainer.fit()
    model.eval()
    generation = settings.generation
    if settings.model == "explainer":
        judge, judge_name = choose_judge(settings.faithfulness.source, settings.faithfulness.grounding_head, store, encoder, eval_tokens,
                                         eval_records)
        evaluation = evaluate_explainer(model, vocab, eval_tokens, eval_records, findings, data.uncertain, generation.beam_size,
                                        generation.max_new_tokens, judge, judge_name)
    else:
        drafts = [str(r.get("draft") or "") for r in eval_records] if settings.edit.source == "prior" else None
        evaluation = evaluate_editor(model, vocab, eval_tokens, eval_records, findings, settings.run.seed + 1, settings.edit.kinds,
                                     generation.beam_size, drafts=drafts)
    metrics = dict(evaluation.metrics, steps=result.step, train_items=len(dataset), skipped_records=len(skipped),
                   encoder=encoder.record.ref, model=settings.model)
    outcome = ReportTrainOutcome(run=run, steps=result.step, history=result.history, evaluation=evaluation, model=model, vocab=vocab)
    already = _stored_by_finished_run(run, result.resumed_from, settings.train.steps)
    if already:
        metrics["stored_model"] = outcome.stored = already
    elif settings.save.name:
        target = open_store(settings.save.store) if settings.save.store else store
        keys = ("answer_accuracy", "explanation_bleu4", "faithfulness_rate") if settings.model == "explainer" else (
            "edit_fix_rate", "edit_damage_rate", "edit_bleu4")
        record = target.save(model, name=settings.save.name, factory=factory, task=TASK, config=config,
                             preprocessing=encoder.record.preprocessing, plugin="reporting",
                             metrics={key: metrics.get(key) for key in keys},
                             parent=encoder.record.ref if target.root == store.root else None,
                             extra={"encoder": encoder.record.ref, "encoder_store": str(settings.encoder.store or ""), "kind": settings.model,
                                    "findings": findings, "run": run.path.name})
        metrics["stored_model"] = outcome.stored = record.ref
    outcome.metrics = metrics
    run.write_metrics({"reporting": metrics, "history": result.history})
    write_training_page(run, settings, metrics, evaluation, eval_records, result.history, settings.examples)
    return outcome


def _edit_pairs(settings: ReportTrainSettings, records: Sequence[Mapping[str, Any]], rows: Mapping[int, int],
                findings: Sequence[str]) -> list[EditPair]:
    """The editor's training pairs: corrupted reports, or each record's own ``draft`` (prior report)."""
    edit = settings.edit
    if edit.source == "corrupt":
        return make_edit_pairs(records, rows, findings, settings.run.seed, edit.variants, edit.keep_share, edit.empty_share, edit.kinds,
                               edit.kind_weights, edit.drop_at_end)
    pairs = []
    for index, record in enumerate(records):
        if index in rows:
            truth = join_report(report_sentences(str(record.get("report") or "")))
            pairs.append(EditPair(rows[index], Corruption("prior", str(record.get("draft") or ""), truth)))
    if not pairs:
        raise ConfigError("edit.source 'prior' needs records with a 'draft' field (the mimic-cxr-reporting builder's prior_pairs option)")
    return pairs


def _stored_by_finished_run(run: RunFolder, resumed_from: int | None, steps: int) -> str | None:
    """The model a run already stored when it is resumed after its last step (so resuming stores no duplicate)."""
    metrics_file = run.path / "metrics.json"
    if resumed_from is None or resumed_from < steps or not metrics_file.exists():
        return None
    return json.loads(metrics_file.read_text(encoding="utf-8")).get("reporting", {}).get("stored_model")
