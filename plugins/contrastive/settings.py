"""Config of the contrastive jobs: ``workbench pretrain`` and ``workbench eval``.

One YAML file per job (``configs/pretrain_phantom.yaml``); every key is
checked, an unknown one is an error naming it and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from workbench.config import ModelSaveSettings, RunSettings, StrictModel
from workbench.train import TrainSettings

OBJECTIVES = ("clip", "siglip", "convirt", "flair", "cosmos")


class PairDataSettings(StrictModel):
    """Where the image-report pairs come from.

    Attributes:
        dataset: a registered builder (``phantom-cxr``, ``mimic-cxr-jpg``, ``iu-xray``,
            ``report-manifest``) called with ``root`` and ``options``.
        root: the dataset folder (the phantoms are written there when missing;
            default: ``<output_root>/data/<dataset>``).
        options: keyword arguments for the builder (e.g. ``n``, ``size``, ``seed`` for phantoms).
        train_split: record ``split`` values used for training.
        eval_split: record ``split`` values used for evaluation (held out).
        max_train: cap on training pairs (``null``: all).
        max_eval: cap on evaluation pairs (``null``: all).
        cache: ``memory`` (decode once), ``disk`` or ``none``.
        findings: label names for zero-shot and linear probe (``null``: every label seen).
    """

    dataset: str = "phantom-cxr"
    root: Path | None = None
    options: dict[str, Any] = {}
    train_split: list[str] = ["train", "val"]
    eval_split: list[str] = ["test"]
    max_train: int | None = Field(None, gt=0)
    max_eval: int | None = Field(None, gt=0)
    cache: Literal["memory", "disk", "none"] = "memory"
    findings: list[str] | None = None


class EncoderSettings(StrictModel):
    """Which dual encoder to build.

    Attributes:
        preset: a registered model (``dual-vit-tiny-minilm``, ``dual-vit-s-32-minilm``, ...).
        options: constructor overrides (``image_size``, ``context_length``, ``pretrained_image``...).
        channels_last: run the image tower in channels-last memory format (faster convolutions/patching on CPU and GPU).
        compile: ``torch.compile`` the model's towers (pays off on long runs; first steps are slower).
        text_unlocked_layers: train only the text tower's last N layers (and its
            projection), as open_clip's ``lock_text_tower``; ``null`` trains it all.
            A pretrained sentence encoder already tells "left" from "right" and
            "no effusion" from "effusion"; locking it cuts a CPU step about 3x, and
            locking it whole (0) lets the job cache its output per report, so only the
            projection runs per step.
    """

    preset: str = "dual-vit-tiny-minilm"
    options: dict[str, Any] = {}
    text_unlocked_layers: int | None = Field(None, ge=0)
    channels_last: bool = False
    compile: bool = False


class ObjectiveSettings(StrictModel):
    """The training objective and its options (see ``losses.build_objective``).

    Attributes:
        name: ``clip``, ``siglip``, ``convirt``, ``flair`` or ``cosmos``.
        options: the objective's own keyword arguments (e.g. ``lambda_``, ``temperature`` for ConVIRT).
        max_sentences: FLAIR/COSMOS sub-captions hold 1..``max_sentences`` sentences.
        local_crops: COSMOS local crops per image (each costs one more image-tower pass).
    """

    name: Literal["clip", "siglip", "convirt", "flair", "cosmos"] = "clip"
    options: dict[str, Any] = {}
    max_sentences: int = Field(3, gt=0)
    local_crops: int = Field(2, gt=0)


class EvalSettings(StrictModel):
    """What to evaluate after training (and in ``workbench eval``).

    Attributes:
        retrieval: image->text and text->image recall@1/5/10.
        zeroshot: per-finding AUROC from positive/negative prompts.
        linear_probe: logistic regression on frozen features at ``probe_fractions`` of the labels.
        probe_fractions: shares of the training labels for the probe.
        examples: retrieval examples (image + top-5 reports) shown in index.html.
        batch_size: images per encoding batch.
    """

    retrieval: bool = True
    zeroshot: bool = True
    linear_probe: bool = True
    probe_fractions: list[float] = [0.01, 0.1, 1.0]
    examples: int = Field(4, ge=0)
    batch_size: int = Field(64, gt=0)


class SaveSettings(ModelSaveSettings):
    """Where the trained encoder goes (``name``, ``store``), and whether ``best`` points at it (``alias_best``)."""

    name: str | None = "contrastive-phantom"
    alias_best: bool = False


class PretrainSettings(StrictModel):
    """``workbench pretrain``: the whole job in one file."""

    run: RunSettings = RunSettings()
    data: PairDataSettings = PairDataSettings()
    model: EncoderSettings = EncoderSettings()
    objective: ObjectiveSettings = ObjectiveSettings()
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()
    save: SaveSettings = SaveSettings()


class EvaluateSettings(StrictModel):
    """``workbench eval``: a stored (or freshly built) encoder on held-out pairs.

    Attributes:
        model: ``name[:version]`` in the registry, or a preset name with ``random: true``.
        random: evaluate the preset with random weights (the floor of the comparison table).
        store: the registry folder (``null``: default).
    """

    run: RunSettings = RunSettings()
    data: PairDataSettings = PairDataSettings()
    model: str = "contrastive-phantom:latest"
    random: bool = False
    model_options: dict[str, Any] = {}
    store: Path | None = None
    eval: EvalSettings = EvalSettings()
