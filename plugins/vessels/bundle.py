"""Export a stored segmentation model as a MONAI bundle that MONAI Label and ``monai.bundle run`` load.

Layout written (MONAI bundle specification)::

    configs/logging.conf    Python logging settings ``monai.bundle run`` picks up
    configs/metadata.json   versions, task, network_data_format, authors, copyright, license, changelog
    configs/inference.json  bundle_root, device, ckpt_path, network_def, network, preprocessing, dataset,
                            dataloader, inferer, postprocessing, handlers, evaluator, run
    models/model.pt         the plain state_dict (``torch.load(..., weights_only=True)`` reads it)
    docs/README.md          how to run it

Run it with ``python -m monai.bundle run --config_file OUT/configs/inference.json``
(``--input_dir``, ``--datalist``, ``--output_dir`` override where images come
from and masks go); this needs ``pytorch-ignite`` (the standard MONAI
``SupervisedEvaluator`` and ``CheckpointLoader``) and ``fire`` (MONAI's CLI).

Preprocessing in the bundle reproduces the workbench's for 8-bit PNG, JPEG,
TIFF and BMP images: read rows-first (``PILReader(reverse_indexing=False)``,
as :func:`workbench.data.readers.read_image` does), converted to RGB (or L for
one-channel models), divided by 255, then the stored record's intensity
scaling (``minmax``, ``zscore``, ``window``) and mean/std. The vessels
plugin's normalisations: ``"image"`` is MONAI's channel-wise
``NormalizeIntensityd`` (MONAI only); ``"fov"`` (statistics inside the derived
field of view) is :class:`FieldOfViewNormalised`, workbench code, so such a
bundle needs the workbench installed. Sliding windows blend with a Gaussian
and masks lose their small pieces as the plugin's own prediction does.
NIfTI images are used as stored, as ``read_image`` does. DICOM goes through
MONAI's ``PydicomReader`` (slope/intercept only), not the workbench's VOI
windowing, so DICOM intensities agree only up to the per-image scaling, and
colour DICOM is not handled (MONAI's reader leaves its samples spatial).
16-bit PNG/TIFF are reduced to 8 bits by the PIL conversion.

Masks are written as NIfTI ``(H, W, 1, 1)`` uint8 0/1, rows-first like the
workbench's own NIfTI masks.
"""

from __future__ import annotations

import copy
import json
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, Hashable, Mapping

import click
import monai
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_data_type, convert_to_dst_type

from workbench.errors import ConfigError, DataError
from workbench.fsutil import atomic_path, atomic_write_text
from workbench.model_records import ModelRecord, Preprocessing, parse_ref
from workbench.model_store import ModelStore
from workbench_plugins.vessels.data_reading import NORMALISATIONS, field_of_view, normalise_image

BUNDLE_SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".ppm")
INPUT_PATTERNS = [f"*{suffix}" for suffix in PIL_SUFFIXES] + ["*.nii", "*.nii.gz", "*.dcm"]
FOV_NORMALISATION_TARGET = "workbench_plugins.vessels.bundle.FieldOfViewNormalised"
# ``monai.bundle run`` reads configs/logging.conf (Python logging fileConfig) when it is there.
LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=console

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=console

[handler_console]
class=StreamHandler
level=INFO
formatter=plain
args=(sys.stdout,)

[formatter_plain]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def _roi_size(record: ModelRecord) -> list[int]:
    """The sliding-window size: the record's ``extra["roi_size"]`` (what run.py predicts with), else the preprocessing's."""
    preprocessing = record.preprocessing
    roi = record.extra.get("roi_size") or preprocessing.extra.get("roi_size") or preprocessing.image_size
    roi = [int(roi), int(roi)] if isinstance(roi, (int, float)) else [int(size) for size in roi]
    if len(roi) != 2 or min(roi) < 1:
        raise ConfigError(f"a 2-D bundle needs a [H, W] roi; the record's preprocessing gives {roi}")
    return roi


def bundle_preprocessing(preprocessing: Preprocessing) -> list[dict[str, Any]]:
    """The MONAI transform configs (key ``"image"``) that prepare inputs as the workbench does for a model.

    Args:
        preprocessing: the stored record's preprocessing (``channels``,
            ``intensity``, ``mean``/``std``, ``extra["window"]`` = [centre, width]
            for ``"window"``, ``extra["channel_wise"]`` for per-channel scaling).

    Returns:
        Transform dicts with ``_target_`` for ``monai.transforms.Compose``; the
        result is a float32 ``(C, H, W)`` rows-first tensor.

    Raises:
        ConfigError: an intensity mode or window the bundle cannot express.
    """
    channels = preprocessing.channels
    if channels not in (1, 3):
        raise ConfigError(f"the bundle reads 1- or 3-channel images; the model takes {channels} channels")
    mode = "RGB" if channels == 3 else "L"
    channel_wise = bool(preprocessing.extra.get("channel_wise", False))
    readers = [
        # PIL and DICOM readers swap the first two axes unless told not to; the workbench reads rows first.
        {"_target_": "PILReader", "reverse_indexing": False, "converter": f"$lambda image: image.convert('{mode}')"},
        {"_target_": "NibabelReader", "squeeze_non_spatial_dims": True},
        {"_target_": "PydicomReader", "swap_ij": False},
    ]
    adapt = ("$lambda x: x.repeat(3, 1, 1) if x.shape[0] == 1 else x[:3]" if channels == 3
             else "$lambda x: x.mean(dim=0, keepdim=True) if x.shape[0] > 1 else x")
    transforms: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "reader": readers, "image_only": True, "dtype": "$numpy.float32"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Lambdad", "keys": "image", "func": adapt},
        # read_image gives 8-bit pictures in [0, 1] and NIfTI/DICOM values as stored.
        {"_target_": "Lambdad", "keys": "image",
         "func": f"$lambda x: x / 255.0 if str(x.meta.get('filename_or_obj', '')).lower().endswith({PIL_SUFFIXES!r}) else x"},
    ]
    normalisation = preprocessing.extra.get("normalisation", "image")
    if normalisation not in NORMALISATIONS:
        raise ConfigError(f"the bundle cannot repeat the image normalisation {normalisation!r}; it knows {', '.join(NORMALISATIONS)}")
    if preprocessing.intensity == "minmax":
        transforms.append({"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0, "channel_wise": channel_wise})
    elif preprocessing.intensity == "zscore" and normalisation in ("fov", "fov-extend"):
        transforms.append({"_target_": FOV_NORMALISATION_TARGET, "keys": "image", "mode": normalisation})
    elif preprocessing.intensity == "zscore" and not preprocessing.mean:
        transforms.append({"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": channel_wise})
    elif preprocessing.intensity == "window":
        window = preprocessing.extra.get("window")
        if not (isinstance(window, (list, tuple)) and len(window) == 2 and float(window[1]) > 0):
            raise ConfigError(f"intensity 'window' needs extra['window'] = [centre, width > 0], got {window!r}")
        centre, width = float(window[0]), float(window[1])
        transforms.append({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": centre - width / 2, "a_max": centre + width / 2,
                           "b_min": 0.0, "b_max": 1.0, "clip": True})
    if preprocessing.mean:
        per_channel = len(preprocessing.mean) > 1
        transforms.append({"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": per_channel,
                           "subtrahend": preprocessing.mean if per_channel else preprocessing.mean[0],
                           "divisor": preprocessing.std if per_channel else preprocessing.std[0]})
    transforms.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    return transforms


class FieldOfViewNormalised(MapTransform):
    """Bundle transform: the vessels plugin's ``"fov"``/``"fov-extend"`` normalisation of a ``(3, H, W)`` image in [0, 1].

    Per channel, zero mean and unit variance over the fundus field of view
    derived from the image, 0 outside it; no FOV found: the whole image. It
    calls the very functions :func:`~.data_reading.load_inference_item` uses,
    so a bundle of a model trained this way needs the workbench installed
    (MONAI's ``NormalizeIntensity`` cannot restrict its statistics to a mask).

    Args:
        keys: the image key(s).
        mode: ``"fov"`` (0 outside the FOV) or ``"fov-extend"`` (nearest FOV value outside).
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, mode: str = "fov", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = mode

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with each key's ``(3, H, W)`` image normalised (meta kept)."""

        record = dict(data)
        for key in self.key_iterator(record):
            image = record[key]
            source = image.meta.get("filename_or_obj") if isinstance(image, MetaTensor) else None
            array = np.asarray(convert_data_type(image, np.ndarray)[0], dtype=np.float32)
            if array.ndim != 3 or array.shape[0] != 3:
                raise DataError(source, f"field-of-view normalisation needs a (3, H, W) image, got {tuple(array.shape)}")
            fov = field_of_view(array, None, source, fallback=True)
            record[key] = convert_to_dst_type(normalise_image(array, fov, self.mode), image, dtype=torch.float32)[0]
        return record


def bundle_inference_config(record: ModelRecord, network_def: Mapping[str, Any], bundle_root: str | Path, out_channels: int) -> dict[str, Any]:
    """The ``configs/inference.json`` content for a stored segmentation model.

    Args:
        record: the stored version (its preprocessing: roi, overlap, threshold in ``extra``).
        network_def: MONAI config of the network (``_target_`` and arguments).
        bundle_root: written as the default ``bundle_root`` (MONAI Label and
            ``--bundle_root`` override it when the bundle moves).
        out_channels: the network's output channels (1: sigmoid; more: softmax + argmax).

    Returns:
        The config dict (JSON-serialisable).
    """
    extra = {**record.preprocessing.extra, **record.extra}  # run.py stores roi_size/threshold/min_component_area in the record's extra
    imports = ["$import glob", "$import os"]
    # AsDiscrete keeps probability >= threshold where scoring.postprocess_mask keeps > threshold: they differ only at equality.
    if out_channels == 1:
        activate = [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                    {"_target_": "AsDiscreted", "keys": "pred", "threshold": "@threshold"}]
    else:
        activate = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
                    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    min_area = int(extra.get("min_component_area") or 0)
    if min_area > 0:
        # As scoring.postprocess_mask: 8-connected pieces under min_component_area pixels go. Not MONAI's
        # RemoveSmallObjects: it passes min_size positionally, and with scikit-image 0.26 it kept a different set (checked).
        imports.append("$from skimage.morphology import remove_small_objects")
        activate.append({"_target_": "Lambdad", "keys": "pred", "func": (
            "$lambda x, area=@min_component_area: x * torch.as_tensor(remove_small_objects("
            "x.detach().cpu().numpy() > 0, max_size=area - 1, connectivity=2), device=x.device, dtype=x.dtype)")})
    return {
        "imports": imports,
        "bundle_root": str(bundle_root),
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "ckpt_path": "$os.path.join(@bundle_root, 'models', 'model.pt')",
        "input_dir": "$os.path.join(@bundle_root, 'inputs')",
        "dataset_dir": "@input_dir",
        "input_patterns": INPUT_PATTERNS,
        "datalist": "$sorted({path for pattern in @input_patterns for path in glob.glob(os.path.join(@input_dir, pattern))})",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "output_ext": ".nii.gz",
        "threshold": float(extra.get("threshold", 0.5)),
        "min_component_area": min_area,
        "roi_size": _roi_size(record),
        "sw_batch_size": int(extra.get("sw_batch_size", 4)),
        "overlap": float(extra.get("overlap", 0.25)),
        "network_def": copy.deepcopy(dict(network_def)),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": bundle_preprocessing(record.preprocessing)},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': path} for path in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
        # Gaussian blending, as the vessels plugin's predict_probabilities does.
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@roi_size", "sw_batch_size": "@sw_batch_size", "overlap": "@overlap",
                    "mode": "gaussian"},
        # squeeze_end_dims=False: a squeezed 2-D mask hits MONAI issue 9068 (spatial_resample fails on rank 1) in the
        # NIfTI writer; unsqueezed, the file holds (H, W, 1, 1) and the pred MONAI Label sees stays (1, H, W).
        "postprocessing": {"_target_": "Compose", "transforms": activate + [
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "vessels", "output_ext": "@output_ext",
             "output_dtype": "$numpy.uint8", "resample": False, "squeeze_end_dims": False, "separate_folder": False, "print_log": False},
        ]},
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "@ckpt_path", "load_dict": {"model": "@network"}, "map_location": "@device"},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader", "network": "@network",
                      "inferer": "@inferer", "postprocessing": "@postprocessing", "val_handlers": "@handlers", "amp": False},
        "run": ["$@evaluator.run()"],
    }


def _package_versions(names: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            continue
    return found


def bundle_metadata(record: ModelRecord, roi: list[int], out_channels: int, inference: Mapping[str, Any]) -> dict[str, Any]:
    """The ``configs/metadata.json`` content: versions, task, data formats, provenance.

    Args:
        record: the stored version.
        roi: the sliding-window ``[H, W]``.
        out_channels: the network's output channels.
        inference: the inference config (the packages it names are listed as required).

    Returns:
        The metadata dict; ``workbench`` holds the source record (ref, sha256, factory, config, preprocessing).
    """
    channels = record.preprocessing.channels
    named = json.dumps(inference)
    wanted = ["pytorch-ignite", "fire", "nibabel", "pillow", "pydicom"]
    wanted += ["scikit-image"] if "skimage" in named else []
    # The graph head network and the field-of-view normalisation are workbench code named in the config.
    wanted += ["medvl-workbench"] if "workbench_plugins." in named else []
    packages = _package_versions(tuple(wanted))
    bundle_version = f"{record.version}.0.0"
    return {
        "schema": BUNDLE_SCHEMA_URL,
        "version": bundle_version,
        "changelog": {bundle_version: f"exported from the medvl-workbench model store: {record.ref} (sha256 {record.sha256[:12]})"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": packages,
        "name": f"{record.name} vessel segmentation",
        "task": f"{record.task}: 2-D vessel segmentation",
        "description": (f"{record.factory} trained with medvl-workbench ({record.plugin} plugin), stored as {record.ref}. "
                        "Input: a 2-D image; output: the vessel mask (sigmoid > threshold, or argmax)."),
        "authors": "medvl-workbench contributors",
        "copyright": "Copyright (c) medvl-workbench contributors",
        "license": "Apache-2.0",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": "photograph or any 2-D grayscale image",
                "num_channels": channels, "spatial_shape": roi, "dtype": "float32",
                # [0, 1] when the scaling ends there; z-scored inputs have no fixed range.
                "value_range": [0, 1] if record.preprocessing.intensity in ("minmax", "window") and not record.preprocessing.mean else [],
                "is_patch_data": True,
                "channel_def": {"0": "red", "1": "green", "2": "blue"} if channels == 3 else {"0": "intensity"},
            }},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": out_channels, "spatial_shape": roi,
                "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": {"0": "vessel logit"} if out_channels == 1 else {str(i): f"class {i}" for i in range(out_channels)},
            }},
        },
        "workbench": {"ref": record.ref, "sha256": record.sha256, "factory": record.factory, "config": record.config,
                      "preprocessing": record.preprocessing.to_dict(), "metrics": record.metrics},
    }


def _build_network(network_def: Mapping[str, Any], state: Mapping[str, torch.Tensor], ref: str) -> torch.nn.Module:
    try:
        network = ConfigParser({"network_def": copy.deepcopy(dict(network_def))}).get_parsed_content("network_def")
    except Exception as exc:  # the config parser raises anything the target's constructor raises
        raise ConfigError(f"network_def for {ref} cannot be instantiated by MONAI's ConfigParser: {exc}") from exc
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"network_def for {ref} does not build the stored network: {exc}") from exc
    return network.eval()


def export_bundle(store: ModelStore, ref: str, out_dir: str | Path, network_def: Mapping[str, Any]) -> Path:
    """Write a MONAI bundle of a stored 2-D segmentation model.

    Args:
        store: the model store holding it.
        ref: ``"NAME"`` or ``"NAME:VERSION"`` (number, ``vN`` or alias).
        out_dir: the bundle folder (created; the files listed in the module docstring are replaced).
        network_def: MONAI config (``{"_target_": ..., ...}``) that builds a module
            with exactly the stored state_dict's keys and shapes.

    Returns:
        The bundle folder (absolute).

    Raises:
        RegistryError: unknown name/version; IntegrityError: tampered weights.
        ConfigError: ``network_def`` does not build the stored network, or its
            preprocessing cannot be expressed in the bundle.
    """
    name, version = parse_ref(ref)
    state, record = store.load_state_dict(name, version)
    network = _build_network(network_def, state, record.ref)
    roi = _roi_size(record)
    with torch.inference_mode():
        probe = network(torch.zeros(1, record.preprocessing.channels, *roi))
    if probe.ndim != 4 or tuple(probe.shape[2:]) != tuple(roi):
        raise ConfigError(f"{record.ref}: a (1, C, {roi[0]}, {roi[1]}) input gave output {tuple(probe.shape)}; expected (1, K, {roi[0]}, {roi[1]})")
    out_channels = int(probe.shape[1])
    root = Path(out_dir).expanduser().resolve()
    inference = bundle_inference_config(record, network_def, root, out_channels)
    with atomic_path(root / "models" / "model.pt") as tmp:
        torch.save({key: tensor.detach().cpu().contiguous() for key, tensor in state.items()}, tmp)
    # Written in the order built (not sorted), so the files read like MONAI's own bundles.
    atomic_write_text(root / "configs" / "metadata.json", json.dumps(bundle_metadata(record, roi, out_channels, inference), indent=2) + "\n")
    atomic_write_text(root / "configs" / "inference.json", json.dumps(inference, indent=2) + "\n")
    atomic_write_text(root / "configs" / "logging.conf", LOGGING_CONF)
    atomic_write_text(root / "docs" / "README.md", _readme(record, roi))
    return root


def _readme(record: ModelRecord, roi: list[int]) -> str:
    return (
        f"# {record.name} (vessel segmentation)\n\n"
        f"Exported from the medvl-workbench model store ({record.ref}, factory `{record.factory}`).\n\n"
        "Run on the images of a folder (PNG, JPEG, TIFF, BMP, NIfTI, DICOM); masks are written as NIfTI:\n\n"
        "    python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\\n"
        "        --input_dir IMAGES --output_dir MASKS\n\n"
        f"Sliding-window inference with a {roi[0]}x{roi[1]} window. Needs `monai`, `pytorch-ignite`, `fire`, `nibabel`, `pillow`.\n"
        "The mask arrays are rows-first (H, W): index i runs down the image rows.\n"
        "Post-processing here is the threshold and the small-component removal stored with the model; test-time\n"
        "mirroring, hysteresis and fragment bridging (`inference.flips`, `inference.low_threshold`,\n"
        "`inference.bridge_max_cost`) run in `workbench vessels predict`.\n"
    )


@click.command("export-bundle")
@click.argument("reference")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--store", "store_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="model store folder (default: $WORKBENCH_HOME/models or the user cache)")
def export_bundle_command(reference: str, out_dir: Path, store_dir: Path | None) -> None:
    """Export stored model REFERENCE (NAME or NAME:VERSION) as a MONAI bundle in OUT_DIR."""
    from workbench_plugins.vessels.models import network_definition

    store = ModelStore(store_dir)
    name, version = parse_ref(reference)
    record = store.resolve(name, version)
    root = export_bundle(store, record.ref, out_dir, network_definition(record.factory, record.config))
    click.echo(f"wrote MONAI bundle of {record.ref} to {root}")
    click.echo(f"run: python -m monai.bundle run --config_file {root / 'configs' / 'inference.json'} --input_dir IMAGES")
