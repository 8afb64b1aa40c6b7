"""``workbench report train``: the answer-and-explain decoder or the report editor on a frozen stored encoder.

The encoder is frozen, so every image is encoded once per run and the
decoder trains on the cached tokens in the shared
:class:`~workbench.train.Trainer` (resume, progress, checkpoints,
TensorBoard). Then it is evaluated on the held-out split, stored with task
``reporting`` (its record names the encoder and holds the vocabulary in its
config), and the run's ``metrics.json`` and ``index.html`` are written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from workbench.data.loaders import build_loader
from workbench.data.skipped import SkippedRecords
from workbench.model_store import open_store
from workbench.errors import ConfigError
from workbench.jobs import JobStart, TrainOutcome, build_records, split_records
from workbench.training_job import StoreRequest, TrainingJob, run_training_job
from workbench_plugins.reporting.corrupt import Corruption
from workbench_plugins.reporting.datasets import IGNORE, EditDataset, EditPair, ExplainDataset, drop_images, make_edit_pairs
from workbench_plugins.reporting.evaluate import evaluate_editor, evaluate_explainer
from workbench_plugins.reporting.faithful import choose_judge
from workbench_plugins.reporting.features import ImageTokens, ReportingEncoder, encode_records
from workbench_plugins.reporting.findings import SIDE_WORDS, SIZE_WORDS, join_report, label_key, presence_question, report_sentences
from workbench_plugins.reporting.models import (
    EDITOR_FACTORY, EXPLAINER_FACTORY, TASK, reporting_editor, reporting_explainer, sequence_loss, verdict_loss,
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


class ReportTrainJob(TrainingJob):
    """``report train`` in the shared job shape: images encoded once, the decoder trained on the cached tokens, evaluated, stored."""

    kind, section, plugin = "report-train", "reporting", "reporting"

    def __init__(self, settings: ReportTrainSettings, builders: Any, *, progress: bool = True,
                 encoded: tuple[ImageTokens, ImageTokens] | None = None) -> None:
        super().__init__(settings, builders, progress=progress)
        self.encoded = encoded

    def prepare(self, start: JobStart, skipped: SkippedRecords | None) -> None:
        """Records of both splits, the findings asked about, the frozen encoder and every image's tokens."""
        data, output_root = self.settings.data, Path(self.settings.run.output_root)
        self.skipped = skipped
        self.train_records = load_report_records(data, self.builders, output_root, data.train_split, data.max_train, skipped)
        self.eval_records = load_report_records(data, self.builders, output_root, data.eval_split, data.max_eval, skipped)
        self.findings = record_findings(data, self.train_records)
        self.store = open_store(self.settings.encoder.store)
        self.encoder = ReportingEncoder.from_store(self.settings.encoder.name, self.store, device=str(start.context.device))
        if self.encoded is None:
            self.encoded = (encode_records(self.encoder, self.train_records, "image", skipped=skipped, progress=self.progress),
                            encode_records(self.encoder, self.eval_records, "image", skipped=skipped, progress=self.progress))

    def build_model(self, start: JobStart) -> torch.nn.Module:
        """The explainer or the editor, with its vocabulary and training items (built after the run's seed is set)."""
        settings, findings = self.settings, self.findings
        train_tokens = self.encoded[0]
        rows = {record_index: row for row, record_index in enumerate(train_tokens.kept)}
        if settings.model == "explainer":
            items = dataset_questions(self.train_records, findings, settings.data.uncertain)
            self.vocab = ReportVocabulary.from_texts([item.question for item in items] + [item.target for item in items]
                                                     + vocabulary_texts(findings))
            self.dataset: Any = ExplainDataset(items, train_tokens.tokens, train_tokens.pooled, rows, self.vocab, settings.decoder.max_length)
            self.factory, build, self.extra_vocab = EXPLAINER_FACTORY, reporting_explainer, 0
        else:
            pairs = _edit_pairs(settings, self.train_records, rows, findings)
            self.vocab = ReportVocabulary.from_texts([str(r.get("report") or "") for r in self.train_records] + vocabulary_texts(findings))
            self.dataset = EditDataset(pairs, train_tokens.tokens, train_tokens.pooled, self.vocab, settings.decoder.max_length,
                                       settings.decoder.max_length, verdicts=settings.decoder.verdict)
            self.factory, build, self.extra_vocab = EDITOR_FACTORY, reporting_editor, self.dataset.extra_vocab
        logger.info("%d training items on %d images, vocabulary of %d word pieces", len(self.dataset), len(train_tokens), len(self.vocab))
        self.config = decoder_config(settings, self.vocab, train_tokens)
        model = build(**self.config)
        if settings.decoder.minilm_embeddings:
            model.init_word_embeddings(minilm_word_embeddings(self.vocab.wordpiece_ids))
        editor = settings.model == "editor"
        self.changed_weight = float(settings.edit.changed_weight) if editor else 1.0
        self.verdict_weight = float(settings.edit.verdict_weight)
        self.image_dropout = float(settings.edit.image_dropout) if editor else 0.0
        return model

    def loader(self, start: JobStart) -> Any:
        """Shuffled batches of training items (questions or draft/report pairs)."""
        return build_loader(self.dataset, batch_size=self.settings.train.batch_size, shuffle=True, seed=self.settings.run.seed, drop_last=True)

    def step(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sequence loss (changed tokens weighted for the editor) plus the verdict loss where the batch has verdicts."""
        batch = _trimmed(batch)
        if self.image_dropout:
            batch["tokens"], batch["pooled"] = drop_images(batch["tokens"], batch["pooled"], self.image_dropout)
        verdict_logits = None
        if "verdict_labels" in batch:
            log_probs, verdict_logits = module(batch["tokens"], batch["pooled"], batch["input_ids"], batch["draft_ids"], batch["draft_extended"],
                                               self.extra_vocab, with_verdicts=True)
        else:
            log_probs = module(batch["tokens"], batch["pooled"], batch["input_ids"], batch.get("draft_ids"), batch.get("draft_extended"),
                               self.extra_vocab)
        if "changed" in batch and self.changed_weight != 1.0:
            weights = 1.0 + (self.changed_weight - 1.0) * batch["changed"].float()
            loss = weighted_sequence_loss(log_probs, batch["targets"], weights)
        else:
            loss = sequence_loss(log_probs, batch["targets"])
        if verdict_logits is not None:
            loss = loss + self.verdict_weight * verdict_loss(verdict_logits, batch["verdict_labels"], self.settings.edit.verdict_class_weights)
        return {"loss": loss}

    def evaluate(self, model: torch.nn.Module, start: JobStart, result: Any) -> dict[str, Any]:
        """Answer accuracy and explanation scores (explainer) or errors fixed vs sentences damaged (editor) on the held-out split."""
        settings, generation, eval_tokens = self.settings, self.settings.generation, self.encoded[1]
        if settings.model == "explainer":
            judge, judge_name = choose_judge(settings.faithfulness.source, settings.faithfulness.grounding_head, self.store, self.encoder,
                                             eval_tokens, self.eval_records)
            self.evaluation = evaluate_explainer(model, self.vocab, eval_tokens, self.eval_records, self.findings, settings.data.uncertain,
                                                 generation.beam_size, generation.max_new_tokens, judge, judge_name)
        else:
            drafts = [str(r.get("draft") or "") for r in self.eval_records] if settings.edit.source == "prior" else None
            self.evaluation = evaluate_editor(model, self.vocab, eval_tokens, self.eval_records, self.findings, settings.run.seed + 1,
                                              settings.edit.kinds, generation.beam_size, drafts=drafts,
                                              follow_below=generation.follow_below)
        return dict(self.evaluation.metrics, train_items=len(self.dataset), encoder=self.encoder.record.ref, model=settings.model)

    def store_request(self, model: torch.nn.Module, metrics: Mapping[str, Any], start: JobStart) -> StoreRequest | None:
        """The decoder in ``save.store`` (default: the encoder's store), its record naming the encoder and the findings."""
        settings = self.settings
        if not settings.save.name:
            return None
        target = open_store(settings.save.store) if settings.save.store else self.store
        keys = ("answer_accuracy", "explanation_bleu4", "faithfulness_rate") if settings.model == "explainer" else (
            "edit_fix_rate", "edit_damage_rate", "edit_bleu4")
        encoder = self.encoder.record
        return StoreRequest(target, model, self.factory, TASK, self.config, encoder.preprocessing,
                            metrics={key: metrics.get(key) for key in keys},
                            parent=encoder.ref if target.root == self.store.root else None,
                            extra={"encoder": encoder.ref, "encoder_store": str(settings.encoder.store or ""), "kind": settings.model,
                                   "findings": self.findings, "run": start.run.path.name})

    def write_pages(self, start: JobStart, metrics: Mapping[str, Any], result: Any, outcome: TrainOutcome) -> None:
        """``index.html``: the held-out figures, examples and the training curve; the outcome keeps the evaluation and vocabulary."""
        outcome.details.update(evaluation=self.evaluation, vocab=self.vocab)
        write_training_page(start.run, self.settings, dict(metrics), self.evaluation, self.eval_records, result.history, self.settings.examples)


def run_report_train(settings: ReportTrainSettings, builders: Any, *, resume: Path | None = None, progress: bool = True,
                     encoded: tuple[ImageTokens, ImageTokens] | None = None) -> TrainOutcome:
    """Train, evaluate and store one reporting decoder (see the module docstring and :class:`ReportTrainJob`).

    Args:
        settings: the job's settings.
        builders: the host's dataset-builder catalog.
        resume: a run folder to continue from its latest checkpoint.
        progress: show progress bars.
        encoded: the train and held-out records' cached tokens, when the caller already has them (the benchmark).

    Returns:
        The :class:`~workbench.jobs.TrainOutcome`; ``details`` holds ``evaluation`` and ``vocab``.
    """
    return run_training_job(ReportTrainJob(settings, builders, progress=progress, encoded=encoded), resume=resume)


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
