"""Config of ``workbench report train``: the answer-and-explain decoder or the report editor on a frozen stored encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from workbench.config import RecordDataSettings, RunSettings, StrictModel
from workbench.train import TrainSettings
from workbench_plugins.reporting.verdicts import FOLLOW_BELOW

PHANTOM_FINDINGS = ["nodule", "consolidation", "pleural_effusion", "cardiomegaly", "pneumothorax"]


class ReportDataSettings(RecordDataSettings):
    """Where the image-report records come from.

    Attributes:
        dataset: a registered builder (``phantom-cxr``, ``mimic-cxr-reporting``, ``report-pairs``).
        root: its folder (default ``<output_root>/data/<dataset>``).
        options: keyword arguments for the builder.
        image_key: the record field holding the image file (``image_png`` for the phantoms' PNGs).
        train_split: ``split`` values trained on.
        eval_split: ``split`` values evaluated (held out).
        max_train: cap on training records (``null``: all).
        max_eval: cap on evaluated records (``null``: all).
        findings: the findings asked about and corrupted (``null``: every label of the records).
        uncertain: how CheXpert's -1 labels are read: ``skip`` (no question), ``positive`` or ``negative``.
    """

    findings: list[str] | None = list(PHANTOM_FINDINGS)
    uncertain: Literal["skip", "positive", "negative"] = "skip"


class EncoderSettings(StrictModel):
    """The frozen stored image encoder (``name[:version]``) and its store (``null``: the default store)."""

    name: str = "contrastive-phantom-clip:latest"
    store: Path | None = None


class DecoderSettings(StrictModel):
    """The decoder's shape (see ``ReportDecoder``).

    Attributes:
        width: model width.
        layers: decoder layers (2-4).
        heads: attention heads.
        ffn: feed-forward width as a multiple of ``width``.
        dropout: dropout.
        max_length: the longest token sequence (question + answer, or report); the editor's drafts are cut to it.
        draft_layers: draft-encoder layers (editor).
        minilm_embeddings: start the word embeddings from MiniLM's.
        verdict: give the editor a sentence-verdict head (keep / delete / rewrite each draft sentence; the edit is then
            built from the draft's sentences, see ``verdicts.reconcile``).
    """

    width: int = Field(256, gt=0)
    layers: int = Field(3, ge=1, le=8)
    heads: int = Field(4, gt=0)
    ffn: int = Field(4, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_length: int = Field(160, ge=16)
    draft_layers: int = Field(2, ge=1)
    minilm_embeddings: bool = True
    verdict: bool = False


class EditPairSettings(StrictModel):
    """How the editor's drafts are made.

    Attributes:
        source: ``corrupt`` (true reports with one injected error) or ``prior`` (each record's ``draft`` field,
            e.g. the same patient's prior report from the ``mimic-cxr-reporting`` builder with ``prior_pairs``).
        variants: corrupted drafts per training record.
        keep_share: share of drafts that are the true report.
        empty_share: share of empty drafts (write from scratch).
        kinds: corruption kinds (``laterality``, ``size``, ``drop``, ``invent``).
        kind_weights: relative odds of each kind among those a report allows (missing kinds: 1). Reports without a
            positive finding allow only ``invent``, so with equal odds about half the corrupted drafts are ``invent``;
            weighting the other kinds up evens the mix.
        changed_weight: loss weight of the target sentences where the edit happens (see
            ``datasets.changed_positions``; 1 = a plain mean). An auxiliary term: without it the few edited tokens
            are drowned by the copied ones and the editor learns to copy everything.
        drop_at_end: train ``drop`` drafts to restore the missing sentence at the end of FINDINGS rather than where it
            stood (which the draft does not tell); scoring accepts the finding's sentence anywhere in FINDINGS.
        verdict_weight: weight of the sentence-verdict loss (cross-entropy per draft token) next to the sequence loss,
            for editors with ``decoder.verdict``.
        verdict_class_weights: the verdict loss's weights of ``keep``, ``delete`` and ``rewrite``.
        image_dropout: probability that a training example's image tokens are blanked (``datasets.drop_images``), so
            the editor learns to check a draft against its own IMPRESSION as well as against the image.
    """

    source: Literal["corrupt", "prior"] = "corrupt"
    variants: int = Field(4, gt=0)
    keep_share: float = Field(0.15, ge=0, le=1)
    empty_share: float = Field(0.05, ge=0, le=1)
    kinds: list[str] = ["laterality", "size", "drop", "invent"]
    kind_weights: dict[str, float] = {}
    changed_weight: float = Field(1.0, ge=0)
    drop_at_end: bool = False
    verdict_weight: float = Field(1.0, ge=0)
    verdict_class_weights: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0], min_length=3, max_length=3)
    image_dropout: float = Field(0.0, ge=0, lt=1)


class GenerationSettings(StrictModel):
    """Decoding for evaluation.

    Attributes:
        beam_size: 1 is greedy.
        max_new_tokens: the length limit.
        follow_below: editors with a verdict head: the head's p(keep) under which a draft sentence the decoder changed
            follows the decoder (see ``verdicts.reconcile``); the default suits a fully trained head, which is sure of
            the sentences it keeps. Choose it on training drafts, never on the held-out ones.
    """

    beam_size: int = Field(1, gt=0)
    max_new_tokens: int = Field(48, gt=0)
    follow_below: float = Field(FOLLOW_BELOW, ge=0, le=1)


class FaithfulnessSettings(StrictModel):
    """Where faithfulness looks for the named finding.

    Attributes:
        source: ``grounding`` (a stored grounding head's heatmap of the explanation), ``masks`` (the records'
            finding masks), or ``auto`` (the head when it loads, else the masks; the metrics say which).
        grounding_head: the stored grounding head ``name[:version]``, trained on the same encoder.
    """

    source: Literal["auto", "grounding", "masks"] = "auto"
    grounding_head: str | None = None


class ReportSaveSettings(StrictModel):
    """Where the trained decoder goes: ``name`` (``null``: not stored), ``store`` (``null``: the encoder's store)."""

    name: str | None = "report-explainer-phantom"
    store: Path | None = None


class ReportTrainSettings(StrictModel):
    """``workbench report train``: one decoder on a frozen stored encoder, evaluated on held-out records.

    Attributes:
        model: ``explainer`` (answer and explanation) or ``editor`` (draft -> corrected report).
        examples: examples shown in index.html.
    """

    model: Literal["explainer", "editor"] = "explainer"
    run: RunSettings = RunSettings()
    data: ReportDataSettings = ReportDataSettings()
    encoder: EncoderSettings = EncoderSettings()
    decoder: DecoderSettings = DecoderSettings()
    edit: EditPairSettings = EditPairSettings()
    train: TrainSettings = TrainSettings(steps=400, batch_size=64, lr=1e-3, weight_decay=0.01, warmup_steps=20, max_grad_norm=1.0,
                                         checkpoint_every=100, log_every=25)
    generation: GenerationSettings = GenerationSettings()
    faithfulness: FaithfulnessSettings = FaithfulnessSettings()
    examples: int = Field(8, ge=0)
    save: ReportSaveSettings = ReportSaveSettings()


class ReportingDemoSettings(StrictModel):
    """The ``reporting`` step of ``workbench demo`` (``options.reporting`` of ``configs/demo.yaml``).

    Attributes:
        data: data settings both decoders share (a :class:`ReportDataSettings` section); the step adds the phantoms
            and the encoder the contrastive step trained on.
        explainer: the answer-and-explain job's own settings (a :class:`ReportTrainSettings` section).
        editor: the report editor's own settings (a :class:`ReportTrainSettings` section).
        shown_studies: held-out studies whose every question is shown with answer, explanation and ground truth.
        shown_edits: held-out drafts with an injected error shown beside their edits.
    """

    data: dict[str, Any] = {}
    explainer: dict[str, Any]
    editor: dict[str, Any]
    shown_studies: int = Field(ge=0)
    shown_edits: int = Field(ge=0)
