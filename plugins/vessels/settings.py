"""Config of the vessel jobs: ``workbench vessels train|predict|evaluate``.

One YAML file per job (``configs/vessels_phantom.yaml``, ``configs/vessels_chase.yaml``);
every key is checked, an unknown one is an error naming it and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from workbench.config import ModelSaveSettings, RunSettings, StrictModel
from workbench.train import TrainSettings
from workbench_plugins.vessels.data_reading import DEFAULT_NORMALISATION

LOSSES = ("dice_ce", "cldice", "skeleton_recall", "graph")


class VesselDataSettings(StrictModel):
    """Where the images, reference masks and fields of view come from, and how training patches are drawn.

    Attributes:
        dataset: a registered builder (``phantom-fundus``, ``drive``, ``chase-db1``, ``stare``, ``hrf``).
        root: the dataset folder (default ``<output_root>/data/<dataset>``; phantoms are written there when missing).
        options: keyword arguments for the builder (``n``, ``size``, ``seed`` for phantoms; ``reference`` for CHASE_DB1).
        train_split: record ``split`` values used for training.
        eval_split: record ``split`` values predicted and scored after training and by ``evaluate``.
        max_train: cap on training images (``null``: all).
        max_eval: cap on evaluated images (``null``: all).
        patch_size: side of the square training patches.
        patches_per_image: patches drawn from one image per visit.
        positive_fraction: share of patches centred on a vessel pixel.
        normalisation: image intensity normalisation, ``fov-extend`` (default), ``fov`` or ``image`` (see
            :mod:`.data_reading`); stored with the network, so prediction repeats it.
    """

    dataset: str = "phantom-fundus"
    root: Path | None = None
    options: dict[str, Any] = {}
    train_split: list[str] = ["train", "val"]
    eval_split: list[str] = ["test"]
    max_train: int | None = Field(None, gt=0)
    max_eval: int | None = Field(None, gt=0)
    patch_size: int = Field(96, gt=0)
    patches_per_image: int = Field(8, gt=0)
    positive_fraction: float = Field(0.5, ge=0.0, le=1.0)
    normalisation: Literal["fov", "fov-extend", "image"] = DEFAULT_NORMALISATION


class VesselModelSettings(StrictModel):
    """Which registered network to build.

    Attributes:
        name: ``vessel-unet``, ``vessel-dynunet`` or ``vessel-attention-unet``.
        options: factory keyword arguments (``in_channels``, ``channels``, ``graph_head``...).
    """

    name: str = "vessel-unet"
    options: dict[str, Any] = {}


class VesselLossSettings(StrictModel):
    """The training loss.

    Attributes:
        name: ``dice_ce``, ``cldice`` (soft-clDice), ``skeleton_recall`` or ``graph`` (SCOPE graph head + clDice).
        options: the loss's own keyword arguments (``alpha``, ``iterations``, ``weight``...).
        tube_radius: Skeleton Recall: the reference skeleton is dilated by this many pixels (data pipeline, once).
    """

    name: Literal["dice_ce", "cldice", "skeleton_recall", "graph"] = "dice_ce"
    options: dict[str, Any] = {}
    tube_radius: int = Field(1, ge=0)


class InferenceSettings(StrictModel):
    """Sliding-window inference and post-processing of full images.

    Attributes:
        roi_size: window side (``null``: the training patch size, or the stored model's).
        overlap: window overlap fraction.
        sw_batch_size: windows per forward pass.
        flips: test-time mirroring: average the probabilities of the image and its three mirrored copies (four
            passes; nnU-Net's default for 2-D).
        threshold: vessel probability threshold.
        min_component_area: components smaller than this (pixels) are removed after thresholding (0: keep all).
        low_threshold: hysteresis: pixels above this join the mask where they connect to one above ``threshold``
            (bridges faint stretches of thin vessels; ``null``: one threshold).
        bridge_max_cost: after small-component removal, every fragment is joined to its nearest piece along the
            cheapest path through the probability map when that path costs at most this (about the sum of
            ``1 - p`` over the gap; see :mod:`.topology_repair`); ``null``: no bridging.
        bridge_window: how far (pixels) beyond a fragment's bounding box a link is sought.
        min_isolated_area: after bridging, components still smaller than this (pixels) are removed (0: keep all).
    """

    roi_size: int | None = Field(None, gt=0)
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(4, gt=0)
    flips: bool = False
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    min_component_area: int = Field(0, ge=0)
    low_threshold: float | None = Field(None, gt=0.0, lt=1.0)
    bridge_max_cost: float | None = Field(None, gt=0.0)
    bridge_window: int = Field(60, gt=0)
    min_isolated_area: int = Field(0, ge=0)


class CheckSettings(StrictModel):
    """Connectivity-check options (as ``workbench check-topology``).

    Attributes:
        break_distance: end points of different components closer than this (pixels) are a likely break.
        fragment_area: components up to this area (pixels) are candidate spurious fragments.
        overlays: images shown with overlays in index.html (``null``: all).
    """

    break_distance: float = Field(10.0, gt=0)
    fragment_area: int = Field(30, ge=0)
    overlays: int | None = Field(None, ge=0)


class VesselSaveSettings(ModelSaveSettings):
    """Where the trained network goes (``name``, ``store``)."""

    name: str | None = "vessels-phantom"


class VesselTrainSettings(StrictModel):
    """``workbench vessels train``: the whole job in one file."""

    run: RunSettings = RunSettings()
    data: VesselDataSettings = VesselDataSettings()
    model: VesselModelSettings = VesselModelSettings()
    loss: VesselLossSettings = VesselLossSettings()
    train: TrainSettings = TrainSettings()
    inference: InferenceSettings = InferenceSettings()
    check: CheckSettings = CheckSettings()
    save: VesselSaveSettings = VesselSaveSettings()


class VesselPredictSettings(VesselTrainSettings):
    """``workbench vessels predict|evaluate``: a stored network on a dataset split or on files.

    The training config works as it is (``--config configs/vessels_phantom.yaml``): its
    ``model``, ``loss`` and ``train`` sections are read and ignored, and its ``save`` section
    names the network to load unless ``weights`` does.

    Attributes:
        weights: ``name[:version]`` in the registry (``null``: ``<save.name>:latest``).
        inputs: image files or folders to predict (``predict`` only; empty: the dataset's ``eval_split``).
        frame: the frame of multi-frame DICOM ``inputs`` (``null``: each file must hold one frame).
        formats: mask files to write besides PNG: ``nifti`` and ``dicom-seg`` (the latter for DICOM inputs).
    """

    weights: str | None = None
    inputs: list[Path] = []
    frame: int | None = Field(None, ge=0)
    formats: list[Literal["nifti", "dicom-seg"]] = ["nifti", "dicom-seg"]

    def weights_ref(self) -> str:
        """The stored network to load: ``weights``, else ``<save.name>:latest``."""
        if self.weights:
            return self.weights
        if not self.save.name:
            raise ValueError("no network to load: set weights=NAME[:VERSION] (save.name is null)")
        return f"{self.save.name}:latest"
