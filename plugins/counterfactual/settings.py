"""Config of the counterfactual plugin's jobs: ``workbench classify train|evaluate`` and ``workbench cae train``.

One YAML file per job (``configs/classify_phantom.yaml``, ``configs/cae_phantom.yaml``);
every section forbids unknown keys, so a typo names the key and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from workbench.config import RunSettings, StrictModel
from workbench.train import TrainSettings

CLASSIFIER_NETWORKS = ("classifier-densenet121", "classifier-resnet18", "classifier-resnet50", "classifier-small-cnn", "classifier-encoder-head")


class LabelledDataSettings(StrictModel):
    """Where labelled images come from and how they are prepared.

    Attributes:
        source: ``phantoms`` (chest phantoms: finding present / absent), ``manifest``
            (CSV/JSONL with ``image`` and ``label``) or ``folder`` (``root/<class>/*.png|*.jpg|*.dcm``).
        root: the phantom folder (written there when missing; default ``<output_root>/data/phantom-cxr``),
            the manifest file, or the class-folder root.
        phantoms: ``n``, ``size``, ``seed`` for the phantom builder.
        finding: phantoms only: ``any`` (any finding vs none) or one finding name (that finding vs not).
        exclusive: phantoms only: keep only studies with no finding or with the named finding alone,
            so "absent" images carry no other finding.
        classes: class names in label order (``null``: from the data: sorted folder names, or the
            manifest's labels).
        image_size: network input side in pixels (images are resized to ``image_size`` squared).
        channels: network input channels (1 grey, 3 RGB); other images are converted.
        intensity: ``unit`` (as read: DICOM and 8/16-bit images in [0, 1], clipped) or ``minmax`` (per image).
        train_split / eval_split: record ``split`` values used for training / evaluation; records
            without one get a split from a hash of their id (80/10/10).
        group_pattern: folder only: a regular expression naming the patient in a file name (its first
            group), so a patient's images share one split (``null``: each file on its own); the
            paediatric chest X-rays need ``'^(person\\d+|(?:NORMAL2-)?IM-\\d+)'``.
        val_fraction / test_fraction: folder only: the shares of images carved for ``val`` / ``test``.
        split_seed: folder only: the seed of that carving.
        cache: ``memory`` (decode once), ``disk`` or ``none``.
        augment: mild random affine augmentation while training (no flips: laterality matters).
        max_train / max_eval: caps on record counts (``null``: all).
    """

    source: Literal["phantoms", "manifest", "folder"] = "phantoms"
    root: Path | None = None
    phantoms: dict[str, int] = {"n": 300, "size": 128, "seed": 0}
    finding: str = "any"
    exclusive: bool = False
    classes: list[str] | None = None
    image_size: int = Field(128, ge=16, le=1024)
    channels: Literal[1, 3] = 1
    intensity: Literal["unit", "minmax"] = "unit"
    train_split: list[str] = ["train", "val"]
    eval_split: list[str] = ["test"]
    group_pattern: str | None = None
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    split_seed: int = 0
    cache: Literal["memory", "disk", "none"] = "memory"
    augment: bool = True
    max_train: int | None = Field(None, gt=0)
    max_eval: int | None = Field(None, gt=0)


class ClassifierModelSettings(StrictModel):
    """Which classifier to train.

    Attributes:
        network: a registered classifier (``classifier-densenet121``, ``classifier-resnet18``,
            ``classifier-resnet50``, ``classifier-small-cnn`` (tens of thousands of weights, for small images such as the
            demo's), or ``classifier-encoder-head`` for a head on a stored encoder).
        encoder: for ``classifier-encoder-head``: the stored encoder ``name[:version]`` (any model
            with ``encode_image(images) -> (B, D)``); it stays frozen.
        encoder_store: the registry folder holding the encoder (``null``: ``save.store``).
        head: ``linear`` (logistic regression) or ``mlp`` (one hidden layer), fitted with scikit-learn
            on the frozen encoder's features.
        hidden: the MLP head's hidden width.
        balanced: weight the loss by inverse class frequency.
        dropout: dropout before the last layer of the MONAI networks (DenseNet), or in the small CNN's units.
        max_pool: ResNets only: ``false`` drops the max-pool after the stem, so the last feature map (the one
            Grad-CAM explains) is 8x8 at 128x128 instead of 4x4, for about 2.5x the compute.
        channels: ``classifier-small-cnn`` only: the output channels of its residual units (each halves the side, so
            ``data.image_size`` must be a multiple of ``2**len(channels)``).
    """

    network: Literal["classifier-densenet121", "classifier-resnet18", "classifier-resnet50", "classifier-small-cnn",
                     "classifier-encoder-head"] = "classifier-resnet18"
    encoder: str | None = None
    encoder_store: Path | None = None
    head: Literal["linear", "mlp"] = "linear"
    hidden: int = Field(256, gt=0)
    balanced: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    max_pool: bool = True
    channels: list[int] = Field(default_factory=lambda: [8, 16, 32], min_length=1)


class StoreSettings(StrictModel):
    """Where a trained model goes in the registry.

    Attributes:
        name: the stored model name (``null``: not stored).
        store: the registry folder (``null``: ``$WORKBENCH_HOME/models`` or the user cache).
        alias_best: also point ``best`` at the new version.
    """

    name: str | None = "classifier-phantom"
    store: Path | None = None
    alias_best: bool = False


class ClassifyTrainSettings(StrictModel):
    """``workbench classify train``: the whole job in one file."""

    run: RunSettings = RunSettings()
    data: LabelledDataSettings = LabelledDataSettings()
    model: ClassifierModelSettings = ClassifierModelSettings()
    train: TrainSettings = TrainSettings(steps=200, batch_size=16, lr=1e-3, weight_decay=1e-4, warmup_steps=10,
                                         checkpoint_every=50, log_every=10)
    save: StoreSettings = StoreSettings()
    examples: int = Field(6, ge=0)


class ClassifyEvaluateSettings(StrictModel):
    """``workbench classify evaluate``: a stored classifier on held-out images.

    Attributes:
        model: the stored classifier ``name[:version]``.
        store: the registry folder (``null``: default).
        batch_size: images per forward pass.
        examples: example images shown in index.html.
    """

    run: RunSettings = RunSettings()
    data: LabelledDataSettings = LabelledDataSettings()
    model: str = "classifier-phantom:latest"
    store: Path | None = None
    batch_size: int = Field(32, gt=0)
    examples: int = Field(6, ge=0)


class CaeModelSettings(StrictModel):
    """The CAE networks' sizes (arXiv 2406.07961: dim 64, class code 8, 4 residual blocks, MLP 256, at 256x256).

    The defaults are the papers' shape at a CPU's size for 128x128 inputs: a 32 x 32 x 32 individual
    code and 2 residual blocks, about 0.1 s per image for a generator + discriminator step on one core.

    Attributes:
        class_dim: length of the class-associated code.
        dim: channels of the first convolution (doubled at each downsampling).
        n_downsample: downsamplings of the individual encoder (the spatial code is ``size / 2**n``).
        n_res: residual blocks in the individual encoder and in the AdaIN decoder.
        mlp_dim: width of the MLP that turns the class code into AdaIN parameters.
        disc_dim: channels of the discriminator's first convolution.
        disc_layers: strided convolutions in the discriminator.
        pool: global pooling of the class encoder and the discriminator: ``avg`` (the papers) or ``max`` (a small
            local lesion is not averaged away; see ``models.global_pool``).
    """

    class_dim: int = Field(8, gt=0)
    dim: int = Field(8, gt=0)
    n_downsample: int = Field(2, ge=1, le=4)
    n_res: int = Field(2, ge=1)
    mlp_dim: int = Field(128, gt=0)
    disc_dim: int = Field(16, gt=0)
    disc_layers: int = Field(4, ge=2, le=6)
    pool: Literal["avg", "max"] = "avg"


class CaeLossSettings(StrictModel):
    """Loss weights (arXiv 2406.07961): generator terms and the discriminator's class term.

    ``classifier_guidance`` is not in the papers: the weight of an extra generator term, the cross-entropy of
    the classifier named in ``guide.classifier`` on the cross images ``x_ab`` against class B (the same target as
    the discriminator's class term) and on the reconstructions against their own class. 0 switches it off (the
    papers' losses alone).

    ``code_separation`` (not in the papers either) weights a contrastive term on the class codes of each batch
    (Hadsell et al. 2006): same-class codes pulled together, codes of different classes pushed at least
    ``code_margin`` apart (see ``losses.code_separation_loss``). 0 switches it off.

    ``minimal_change`` (not in the papers) weights the mean ``|x_ab - reconstruction of a|``: a class-code swap should
    change as little of the image as it must (see ``losses``). 0 switches it off.
    """

    reconstruction: float = Field(10.0, ge=0)
    class_code: float = Field(1.0, ge=0)
    individual_code: float = Field(1.0, ge=0)
    cycle: float = Field(10.0, ge=0)
    adversarial: float = Field(1.0, ge=0)
    classification: float = Field(1.0, ge=0)
    disc_classification: float = Field(2.0, ge=0)
    classifier_guidance: float = Field(0.0, ge=0)
    code_separation: float = Field(0.0, ge=0)
    code_margin: float = Field(4.0, gt=0)
    minimal_change: float = Field(0.0, ge=0)


class CaeGuideSettings(StrictModel):
    """The stored classifier behind ``loss.classifier_guidance`` (usually the classifier the CAE will explain).

    Attributes:
        classifier: a stored classifier ``name[:version]`` trained on the CAE's classes (``null``: none).
        store: the registry folder holding it (``null``: ``save.store``).
    """

    classifier: str | None = None
    store: Path | None = None


class CaeOptimSettings(StrictModel):
    """Adam for both networks (the papers: lr 1e-4, betas (0.5, 0.999)).

    ``decay_steps`` (not in the CAE papers; CycleGAN's schedule): the last ``decay_steps`` of ``train.steps`` bring
    the rate linearly from ``lr`` to 0; 0 keeps it constant (the papers). Why: a GAN's generator at a constant rate
    keeps swinging; on the phantoms the CAE's reconstructions kept the image's class in 96% of test images at one
    checkpoint and 60% two hundred steps later. It may be switched on when resuming: the decay covers the last
    ``decay_steps`` of the new ``train.steps``.
    """

    lr: float = Field(1e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    decay_steps: int = Field(0, ge=0)


class CaeTrainSettings(StrictModel):
    """``workbench cae train``: the whole job in one file.

    ``train.lr``, ``train.weight_decay``, ``train.schedule`` and ``train.grad_accum`` are not used:
    the optimizer is ``optim`` (Adam, constant rate unless ``optim.decay_steps``) and each micro-batch takes one
    discriminator and one generator step.
    """

    run: RunSettings = RunSettings()
    data: LabelledDataSettings = LabelledDataSettings(augment=False)
    model: CaeModelSettings = CaeModelSettings()
    loss: CaeLossSettings = CaeLossSettings()
    optim: CaeOptimSettings = CaeOptimSettings()
    guide: CaeGuideSettings = CaeGuideSettings()
    train: TrainSettings = TrainSettings(steps=4000, batch_size=4, lr=1e-4, weight_decay=0.0, schedule="constant",
                                         checkpoint_every=250, log_every=50)
    class_balanced: bool = True
    save: StoreSettings = StoreSettings(name="cae-phantom")
    examples: int = Field(4, ge=0)


class ExplainSettings(StrictModel):
    """``workbench explain``: counterfactual explanations of a stored classifier with a stored CAE.

    Attributes:
        classifier: the stored classifier ``name[:version]``.
        cae: the stored CAE ``name[:version]`` (trained on the classifier's classes).
        store: the registry folder (``null``: default).
        image: one image file to explain; ``null`` explains ``data.eval_split`` (the batch form).
        frame: the frame of a multi-frame DICOM ``image`` (``null``: the file must hold one frame).
        target: the target class (name or index); ``null`` for the other class of a binary classifier.
        data: the batch form's images (and lesion masks, where the layout has them).
        max_cases: how many images the batch form explains.
        path: ``linear`` (K steps to the target's centroid code) or ``guided`` (a Kepler Mapper graph
            over the class codes of ``data.train_split``, shortest route to a target-class node).
        steps: K, steps of the linear class-code path.
        reference: the linear path's end: ``centroid`` (the CAE's mean code of the target class) or ``nearest`` (the
            code of the ``data.train_split`` image of the target class nearest to the image's code, among
            ``reference_cases`` images; see ``explain.nearest_exemplar``).
        guided_cubes / guided_overlap: the Kepler Mapper cover (cubes per lens axis, their overlap).
        reference_cases: at most this many ``data.train_split`` images make the guided path's graph (and the
            ``nearest`` reference codes).
        smoothing_sigma: Gaussian sigma (pixels) of the saliency smoothing.
        baselines: saliency baselines on the same classifier: ``gradcam``, ``gradcampp``, ``occlusion``.
        occlusion_mask: occlusion patch side in pixels.
        evaluate: compute the metrics table (flip rate on correctly classified images, proximity,
            sparsity, localisation, queries and seconds per explanation).
        topk_percent: the k of the top-k% Dice.
        shown: cases drawn in index.html.
    """

    run: RunSettings = RunSettings()
    classifier: str = "classifier-phantom"
    cae: str = "cae-phantom"
    store: Path | None = None
    image: Path | None = None
    frame: int | None = Field(None, ge=0)
    target: str | int | None = None
    data: LabelledDataSettings = LabelledDataSettings(augment=False)
    max_cases: int = Field(20, gt=0)
    path: Literal["linear", "guided"] = "linear"
    steps: int = Field(10, gt=0)
    reference: Literal["centroid", "nearest"] = "centroid"
    guided_cubes: int = Field(8, gt=0)
    guided_overlap: float = Field(0.4, gt=0, lt=1)
    reference_cases: int = Field(300, ge=10)
    smoothing_sigma: float = Field(1.5, ge=0)
    baselines: list[Literal["gradcam", "gradcampp", "occlusion"]] = ["gradcam"]
    occlusion_mask: int = Field(16, gt=0)
    evaluate: bool = False
    topk_percent: float = Field(5.0, gt=0, le=100)
    shown: int = Field(8, ge=0)
