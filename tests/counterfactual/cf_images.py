"""Small labelled image sets the counterfactual tests write into ``tmp_path``.

- :func:`write_blob_folder`: a class-folder layout (``root/<class>/*.png``) of textured grey
  images; class ``lesion`` carries one bright round blob, class ``normal`` none. Easy to learn,
  so a short training run must separate the classes, and the blob's mask is known exactly.
- :func:`write_phantom_folder`: chest phantoms sorted into ``no_finding/`` and ``finding/``,
  alternating PNG and DICOM files, for the "real-looking images, DICOM input" path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from workbench.data.phantoms import make_cxr_study, write_cxr_dicom


def blob_image(rng: np.random.Generator, size: int, lesion: bool) -> tuple[np.ndarray, np.ndarray]:
    """One ``(size, size)`` uint8 image and its bool lesion mask (empty for ``lesion=False``)."""
    texture = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=size / 24)
    image = 0.35 + 0.08 * texture / (texture.std() + 1e-6)
    mask = np.zeros((size, size), dtype=bool)
    if lesion:
        rows, cols = np.mgrid[:size, :size]
        radius = rng.uniform(0.1, 0.16) * size
        centre = rng.uniform(radius + 2, size - radius - 2, size=2)
        mask = np.hypot(rows - centre[0], cols - centre[1]) <= radius
        image = image + 0.4 * mask
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), mask


def write_blob_folder(root: Path, per_class: int, size: int = 32, seed: int = 0) -> Path:
    """Write ``root/normal/*.png`` and ``root/lesion/*.png`` (``per_class`` each) plus ``masks/``; returns ``root``."""
    rng = np.random.default_rng(seed)
    for name in ("normal", "lesion"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root.parent / f"{root.name}-masks").mkdir(parents=True, exist_ok=True)
    for index in range(per_class):
        for name in ("normal", "lesion"):
            pixels, mask = blob_image(rng, size, name == "lesion")
            Image.fromarray(pixels).save(root / name / f"{name}{index:03d}.png")
            if name == "lesion":
                Image.fromarray(mask.astype(np.uint8) * 255).save(root.parent / f"{root.name}-masks" / f"{name}{index:03d}.png")
    return root


def write_phantom_folder(root: Path, count: int, seed: int = 0, size: int = 128) -> Path:
    """Chest phantoms in ``root/no_finding`` and ``root/finding``; even indices as PNG, odd as DICOM. Returns ``root``."""
    for index in range(count):
        study = make_cxr_study(index, seed=seed, size=size)
        folder = root / ("finding" if study.findings else "no_finding")
        folder.mkdir(parents=True, exist_ok=True)
        if index % 2:
            write_cxr_dicom(folder / f"{study.id}.dcm", study, seed, index)
        else:
            Image.fromarray((study.image * 255).round().astype(np.uint8)).save(folder / f"{study.id}.png")
    return root


def write_three_class_manifest(root: Path, per_class: int, size: int = 32, seed: int = 0) -> Path:
    """A JSONL manifest with string labels ``blob``/``bar``/``plain`` (bright disc, bright bar, nothing); returns its path."""
    import json

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(per_class):
        for label in ("plain", "blob", "bar"):
            pixels, _ = blob_image(rng, size, label == "blob")
            if label == "bar":
                start = int(rng.integers(2, size - 8))
                pixels[:, start:start + 5] = np.clip(pixels[:, start:start + 5].astype(int) + 100, 0, 255)
            name = f"{label}{index:03d}.png"
            Image.fromarray(pixels).save(root / name)
            lines.append(json.dumps({"id": f"{label}{index:03d}", "image": name, "label": label}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root / "manifest.jsonl"


__all__ = ["blob_image", "write_blob_folder", "write_phantom_folder", "write_three_class_manifest"]
