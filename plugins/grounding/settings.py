"""Config of the grounding jobs: ``workbench ground`` (zero-shot or with a head), ``ground evaluate`` and ``ground train``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from workbench.config import RecordDataSettings, RunSettings, StrictModel
from workbench.train import TrainSettings
from workbench_plugins.grounding.losses import LossWeights
from workbench_plugins.grounding.metrics import DEFAULT_THRESHOLDS


class GroundingDataSettings(RecordDataSettings):
    """Where the phrase-box annotations come from.

    Attributes:
        dataset: a registered builder (``phantom-cxr``, ``ms-cxr``, ``box-manifest``).
        root: its folder (phantoms are written there when missing; default ``<output_root>/data/<dataset>``).
        options: keyword arguments for the builder.
        image_key: the record field holding the image file (``image_png`` reads the phantoms' PNGs, faster than DICOM).
        train_split: ``split`` values for training the head.
        eval_split: ``split`` values evaluated (held out).
        max_train: cap on training images (``null``: all).
        max_eval: cap on evaluated images (``null``: all).
    """


class EncoderRefSettings(StrictModel):
    """The stored dual encoder grounding uses.

    Attributes:
        name: ``name[:version]`` in the model store (a contrastive encoder).
        store: the store folder (``null``: ``$WORKBENCH_HOME/models`` or the user cache).
    """

    name: str = "contrastive-phantom:latest"
    store: Path | None = None


class ZeroShotSettings(StrictModel):
    """How zero-shot heatmaps are made.

    Attributes:
        method: ``similarity`` (patch-phrase cosine, BioViL), ``occlusion`` (similarity drop
            when a window is hidden), ``flair-attention`` (FLAIR's text-conditioned pool) or
            ``interaction-cam`` (gradient x tokens of the image-phrase similarity at the last image block).
        window: occluding window side, as a fraction of the encoder's input side; a list of fractions combines
            several sizes (see ``zero_shot.occlusion_maps``).
        overlap: overlap of neighbouring occlusion windows.
        fill: what replaces an occluded window: ``mean_img`` (the image mean), ``mean_patch`` (the window's mean),
            ``gaussian`` (MONAI's Gaussian-weighted window) or ``dark`` (the image's 5th-percentile value).
    """

    method: Literal["similarity", "occlusion", "flair-attention", "interaction-cam"] = "occlusion"
    window: float | list[float] = 0.25
    overlap: float = Field(0.5, ge=0, lt=1)
    fill: Literal["mean_img", "mean_patch", "gaussian", "dark"] = "dark"

    @field_validator("window")
    @classmethod
    def _fractions(cls, value: float | list[float]) -> float | list[float]:
        sizes = [value] if isinstance(value, (int, float)) else list(value)
        if not sizes or any(not 0 < size <= 1 for size in sizes):
            raise ValueError(f"window must be a fraction in (0, 1] or a non-empty list of them, not {value!r}")
        return value


class BoxSettings(StrictModel):
    """Heatmap -> boxes and the metrics' thresholds.

    Attributes:
        threshold: fraction of the heatmap's range above which pixels form boxes.
        max_boxes: boxes kept per phrase.
        thresholds: the mIoU sweep.
        miou_threshold: the threshold whose IoU is reported as ``miou`` (``null``: the best of the sweep).
    """

    threshold: float = Field(0.5, ge=0, le=1)
    max_boxes: int = Field(3, gt=0)
    thresholds: list[float] = list(DEFAULT_THRESHOLDS)
    miou_threshold: float | None = None


class GroundSettings(StrictModel):
    """``workbench ground`` / ``workbench ground evaluate``: heatmaps, boxes and metrics over a manifest.

    Attributes:
        head: a stored grounding head (``name[:version]``, task ``grounding``) to use instead of zero-shot.
        examples: images shown in index.html (worst cases first).
        saliency_dir: a folder of saliency maps named ``<record id>.npy``/``.png`` (e.g. a counterfactual
            run's) to lay over the phrase heatmaps, with their overlap reported.
        negations: also ground "no <category>" for each phrase and report how often its peak is lower.
    """

    run: RunSettings = RunSettings()
    data: GroundingDataSettings = GroundingDataSettings()
    encoder: EncoderRefSettings = EncoderRefSettings()
    zero_shot: ZeroShotSettings = ZeroShotSettings()
    boxes: BoxSettings = BoxSettings()
    head: str | None = None
    examples: int = Field(8, ge=0)
    saliency_dir: Path | None = None
    negations: bool = True


class HeadSettings(StrictModel):
    """The supervised head's shape (see ``PhraseGroundingHead``)."""

    hidden: int = Field(128, gt=0)
    layers: int = Field(2, gt=0)
    heads: int = Field(4, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)


class HeadSaveSettings(StrictModel):
    """Where the trained head goes.

    Attributes:
        name: the stored name (``null``: not stored).
        store: the store folder (``null``: the encoder's store).
    """

    name: str | None = "grounding-head-phantom"
    store: Path | None = None


class GroundTrainSettings(StrictModel):
    """``workbench ground train``: a head on the frozen encoder, trained on phrase boxes and evaluated on held-out ones.

    Attributes:
        heatmap_target: what the heatmap loss compares with: ``box`` (the phrase's box, what MS-CXR
            annotates and mIoU is scored against) or ``mask`` (the finding's mask where the record has one).
        heatmap: the heatmap the trained head gives (evaluated, and stored with it): ``patches`` (its patch map) or
            ``box`` (the patch map weighted by a Gaussian on its regressed box; for coarse patch grids).
    """

    run: RunSettings = RunSettings()
    data: GroundingDataSettings = GroundingDataSettings()
    encoder: EncoderRefSettings = EncoderRefSettings()
    head: HeadSettings = HeadSettings()
    loss: LossWeights = LossWeights()
    heatmap_target: Literal["box", "mask"] = "box"
    heatmap: Literal["patches", "box"] = "patches"
    train: TrainSettings = TrainSettings(steps=1500, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_steps=50,
                                         checkpoint_every=250, log_every=50)
    boxes: BoxSettings = BoxSettings()
    examples: int = Field(8, ge=0)
    save: HeadSaveSettings = HeadSaveSettings()
