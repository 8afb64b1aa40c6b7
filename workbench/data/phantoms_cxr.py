"""Chest-radiograph-like phantoms: anatomy, findings with exact masks, and the study record.

Orientation follows the radiological convention of a frontal (PA) chest film:
the image is seen as if facing the patient, so the **patient's left is on the
image's right** (high column index) and the patient's right on the image's
left. Rows run from head (row 0) to feet. The heart therefore bulges to the
image's right, and a finding with laterality ``"left"`` lies in the lung on the
image's right half. The DICOM files state the same with
``PatientOrientation = ["L", "F"]``.

Intensities are float32 in ``[0, 1]`` with MONOCHROME2 meaning: air is dark,
soft tissue grey, bone and fluid bright. Every study is a pure function of
``(seed, index)``: its random generator is seeded from both, so studies can be
generated in any order or in parallel and always come out the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

from workbench.data.phantoms_report import write_report
from workbench.errors import ConfigError

FINDINGS: tuple[str, ...] = ("nodule", "consolidation", "pleural_effusion", "cardiomegaly", "pneumothorax")
SIZE_WORDS: tuple[str, ...] = ("small", "moderate", "large")
LATERALITIES: tuple[str, ...] = ("right", "left")
# Independent draws at 0.2 each leave (0.8)^5 ~ 33% of studies with no finding.
FINDING_PREVALENCE = 0.2
CXR_SIZE_RANGE = (128, 1024)
# The stream tag keeps chest and fundus generators apart for the same (seed, index).
_CXR_STREAM = 1


@dataclass
class Finding:
    """One finding of a study, with its exact pixel mask.

    Attributes:
        name: one of :data:`FINDINGS`.
        laterality: ``"right"``/``"left"`` (the patient's side), ``"none"`` for cardiomegaly.
        size: ``"small"``, ``"moderate"`` or ``"large"``.
        zone: ``"upper"``/``"middle"``/``"lower"`` lung zone of the mask's centroid, ``"none"`` for cardiomegaly.
        mask: ``(H, W)`` bool, the pixels the finding changed (the heart for cardiomegaly).
        box: ``(x, y, w, h)`` in pixels, the mask's bounding box (x = column, y = row).
        phrase: the exact text that names the finding in the report (set when the report is written).
    """

    name: str
    laterality: str
    size: str
    zone: str
    mask: np.ndarray
    box: tuple[int, int, int, int]
    phrase: str = ""


@dataclass
class CxrStudy:
    """A synthetic chest radiograph with its findings, report and ground truth.

    Attributes:
        id: ``"cxr-00042"`` for index 42.
        image: ``(H, W)`` float32 in ``[0, 1]``, rows = head to feet, patient's left on the right.
        findings: the findings present, in :data:`FINDINGS` order.
        report: ``"FINDINGS: ...\\n\\nIMPRESSION: ..."``.
        masks: finding name -> ``(H, W)`` bool mask, for the findings present (pairwise disjoint).
        boxes: one dict per finding phrase: ``phrase``, ``category``, ``x``, ``y``, ``w``, ``h``.
        labels: finding name -> 0/1 for all of :data:`FINDINGS`.
        anatomy: ``body``, ``lung_right``, ``lung_left``, ``heart`` -> ``(H, W)`` bool masks.
        pixel_spacing_mm: the physical size of a pixel (a 35 cm field over the image side).
    """

    id: str
    image: np.ndarray
    findings: list[Finding]
    report: str
    masks: dict[str, np.ndarray]
    boxes: list[dict[str, Any]]
    labels: dict[str, int]
    anatomy: dict[str, np.ndarray] = field(default_factory=dict)
    pixel_spacing_mm: float = 1.0

    @property
    def label_map(self) -> np.ndarray:
        """``(H, W)`` uint8: 0 background, ``FINDINGS.index(name) + 1`` inside each finding's mask."""
        label_map = np.zeros(self.image.shape, dtype=np.uint8)
        for name, mask in self.masks.items():
            label_map[mask] = FINDINGS.index(name) + 1
        return label_map


def study_rng(seed: int, index: int, stream: int = _CXR_STREAM) -> np.random.Generator:
    """A generator that depends only on ``(seed, index, stream)``, never on other studies."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(stream)]))


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box ``(x, y, w, h)`` of a non-empty ``(H, W)`` bool mask; x = column, y = row."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def check_size(size: int, allowed: tuple[int, int], what: str) -> int:
    """Return ``size`` if inside ``allowed`` (inclusive), else raise ConfigError naming ``what``."""
    if not isinstance(size, (int, np.integer)) or not allowed[0] <= int(size) <= allowed[1]:
        raise ConfigError(f"{what}: size must be an integer in [{allowed[0]}, {allowed[1]}], got {size!r}")
    return int(size)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates ``(u, v)``, each ``(H, W)`` float32: u = column, v = row."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    v, u = np.meshgrid(coords, coords, indexing="ij")
    u.setflags(write=False)
    v.setflags(write=False)
    return u, v


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


class _Anatomy:
    """The normal thorax of one study: masks, the lung ellipses and the intensity image."""

    def __init__(self, rng: np.random.Generator, size: int, cardiomegaly_ctr: float | None):
        u, v = _grid(size)
        self.size = size
        cx = 0.5 + rng.normal(0.0, 0.01)
        self.cx = cx
        body_half_width = rng.uniform(0.40, 0.46)
        body = ((u - cx) / body_half_width) ** 2 + ((v - 0.62) / 0.62) ** 4 <= 1.0
        body |= (np.abs(u - cx) < 0.09) & (v < 0.2)
        dx, vy = rng.uniform(0.19, 0.21), rng.uniform(0.42, 0.46)
        rx, ry = rng.uniform(0.13, 0.155), rng.uniform(0.26, 0.30)
        self.ellipses: dict[str, tuple[float, float, float, float]] = {}
        for side in LATERALITIES:
            sign = -1.0 if side == "right" else 1.0
            self.ellipses[side] = (cx + sign * dx + rng.normal(0, 0.005), vy + rng.normal(0, 0.01), rx * rng.uniform(0.95, 1.05), ry)
        thorax_width = (self.ellipses["left"][0] + self.ellipses["left"][2]) - (self.ellipses["right"][0] - self.ellipses["right"][2])
        # Normal hearts stay below a cardiothoracic ratio of 0.46, enlarged ones above 0.54: a margin of
        # several pixels either side of the clinical 0.5 threshold at 256 px.
        ctr = cardiomegaly_ctr if cardiomegaly_ctr is not None else rng.uniform(0.36, 0.46)
        heart_u, heart_v = cx + rng.uniform(0.03, 0.05), rng.uniform(0.58, 0.62)
        heart_ru, heart_rv = ctr * thorax_width / 2.0, rng.uniform(0.11, 0.14) * (1.0 + 0.5 * max(ctr - 0.46, 0.0))
        heart = _ellipse(u, v, heart_u, heart_v, heart_ru, heart_rv) & (v < heart_v + 0.75 * heart_rv) & body
        mediastinum_half_width = rng.uniform(0.04, 0.055)
        self.lungs: dict[str, np.ndarray] = {}
        dome_height = rng.uniform(0.04, 0.07)
        diaphragm = np.zeros_like(u)
        for side, (lu, lv, lru, lrv) in self.ellipses.items():
            sign = -1.0 if side == "right" else 1.0
            # The liver lifts the right hemidiaphragm a little above the left.
            base = lv + 0.8 * lrv - (0.02 if side == "right" else 0.0)
            dome = base - dome_height * np.clip(1.0 - ((u - (lu - sign * 0.2 * lru)) / (1.1 * lru)) ** 2, 0.0, 1.0)
            lung = _ellipse(u, v, lu, lv, lru, lrv) & (v < dome) & (np.abs(u - cx) > mediastinum_half_width) & ~heart & body
            self.lungs[side] = lung
            diaphragm = np.where((u < cx) if side == "right" else (u >= cx), dome, diaphragm)
        self.body, self.heart = body, heart
        lung_union = self.lungs["right"] | self.lungs["left"]

        # Vessel markings: low-pass noise, strongest around the hila, inside the lungs only.
        texture = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma=1.2 * size / 256)
        texture /= texture.std() + 1e-6
        hilum = np.exp(-(((np.abs(u - cx) - 0.1) / 0.12) ** 2 + ((v - 0.45) / 0.2) ** 2))
        self.markings = (0.025 * texture * (0.5 + hilum)).astype(np.float32) * lung_union
        self.texture = texture

        image = np.full((size, size), 0.03, dtype=np.float32)
        image += body * (rng.uniform(0.38, 0.46) + 0.08 * np.clip((v - 0.5) / 0.5, 0.0, 1.0))
        image += ((np.abs(u - cx) < mediastinum_half_width + 0.02) & (v < heart_v) & body) * 0.05
        spine = (np.abs(u - cx) < 0.035) & body
        image += spine * (0.07 + 0.03 * np.cos(2 * np.pi * v / rng.uniform(0.045, 0.055)))
        heart_density = rng.uniform(0.10, 0.14)
        image += heart * heart_density
        # Below the domes the liver and spleen are as dense as the heart, so the heart sits on the diaphragm.
        image += (body & ~heart) * heart_density * np.clip((v - diaphragm) / 0.015, 0.0, 1.0)
        self.lung_contrast = rng.uniform(0.24, 0.30)
        image -= lung_union * self.lung_contrast
        image += self.markings
        image += self._ribs(rng, u, v, cx, vy + ry) * body
        self.image = image

    @staticmethod
    def _ribs(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, cx: float, lung_base: float) -> np.ndarray:
        """Bright curved bands: posterior ribs arching down laterally, and the clavicles."""
        offset = np.abs(u - cx)
        arch = 0.9 * offset**2 - 0.12 * offset
        phase = (v - arch - rng.uniform(0.0, 0.06)) / rng.uniform(0.058, 0.068)
        bands = np.clip((np.cos(2 * np.pi * phase) - 0.45) / 0.55, 0.0, 1.0)
        window = np.clip((v - 0.1) / 0.04, 0.0, 1.0) * np.clip((lung_base - v) / 0.04, 0.0, 1.0) * np.clip((offset - 0.03) / 0.04, 0.0, 1.0)
        clavicle = (np.abs(v - (0.15 + 0.1 * offset)) < 0.012) & (offset > 0.04) & (offset < 0.3)
        return (rng.uniform(0.07, 0.11) * bands * window + 0.08 * clavicle).astype(np.float32)


def _zone(mask: np.ndarray, lung: np.ndarray) -> str:
    rows = np.flatnonzero(lung.any(axis=1))
    centroid = np.flatnonzero(mask.any(axis=1)).mean() if mask.any() else rows.mean()
    fraction = (centroid - rows[0]) / max(rows[-1] - rows[0], 1)
    return "upper" if fraction < 1 / 3 else "middle" if fraction < 2 / 3 else "lower"


def _add_effusion(anatomy: _Anatomy, rng: np.random.Generator, side: str, size_word: str) -> np.ndarray:
    u, v = _grid(anatomy.size)
    lung = anatomy.lungs[side]
    lu, _, lru, _ = anatomy.ellipses[side]
    rows = np.flatnonzero(lung.any(axis=1)) / anatomy.size
    height_fraction = {"small": (0.12, 0.18), "moderate": (0.25, 0.33), "large": (0.42, 0.55)}[size_word]
    level = rows[-1] - rng.uniform(*height_fraction) * (rows[-1] - rows[0])
    lateral = np.clip((1.0 if side == "left" else -1.0) * (u - lu) / lru, 0.0, 1.0)
    # The meniscus climbs the lateral chest wall.
    mask = lung & (v > level - rng.uniform(0.03, 0.06) * lateral)
    anatomy.image[mask] += anatomy.lung_contrast * rng.uniform(0.85, 1.0) - anatomy.markings[mask]
    return mask


def _add_pneumothorax(anatomy: _Anatomy, rng: np.random.Generator, side: str, size_word: str, taken: np.ndarray) -> np.ndarray:
    u, v = _grid(anatomy.size)
    lung = anatomy.lungs[side]
    lu, lv, lru, lrv = anatomy.ellipses[side]
    sign = -1.0 if side == "right" else 1.0
    # The lung collapses towards its hilum: scale the lung ellipse about a medial, lower anchor.
    anchor_u, anchor_v = lu - sign * 0.9 * lru, lv + 0.6 * lrv
    scale = rng.uniform(*{"small": (0.86, 0.9), "moderate": (0.76, 0.82), "large": (0.62, 0.7)}[size_word])
    collapsed = _ellipse(u, v, anchor_u + scale * (lu - anchor_u), anchor_v + scale * (lv - anchor_v), scale * lru, scale * lrv)
    mask = lung & ~collapsed & ~taken
    pleural_line = lung & collapsed & ~taken & ndimage.binary_dilation(mask)
    anatomy.image[mask] -= anatomy.markings[mask] + rng.uniform(0.08, 0.12)
    anatomy.image[pleural_line] += 0.08
    return mask


def _add_consolidation(anatomy: _Anatomy, rng: np.random.Generator, side: str, size_word: str, taken: np.ndarray) -> np.ndarray:
    u, v = _grid(anatomy.size)
    aerated = anatomy.lungs[side] & ~taken
    candidates = np.argwhere(ndimage.distance_transform_edt(aerated) > 0.04 * anatomy.size)
    if len(candidates) == 0:
        candidates = np.argwhere(aerated)
    row, col = candidates[rng.integers(len(candidates))]
    centre_u, centre_v = (col + 0.5) / anatomy.size, (row + 0.5) / anatomy.size
    blob = np.zeros_like(u)
    for _ in range(rng.integers(3, 7)):
        du, dv, sigma = rng.normal(0, 0.03), rng.normal(0, 0.03), rng.uniform(0.03, 0.06)
        blob += np.exp(-((u - centre_u - du) ** 2 + (v - centre_v - dv) ** 2) / (2 * sigma**2))
    blob *= 1.0 + 0.15 * anatomy.texture
    area_fraction = rng.uniform(*{"small": (0.04, 0.08), "moderate": (0.1, 0.16), "large": (0.2, 0.3)}[size_word])
    target = max(int(area_fraction * anatomy.lungs[side].sum()), 8)
    values = blob[aerated]
    threshold = np.partition(values, len(values) - target)[len(values) - target] if target < len(values) else values.min()
    mask = aerated & (blob >= threshold)
    normalised = (blob[mask] - threshold) / (blob[mask].max() - threshold + 1e-6)
    anatomy.image[mask] += rng.uniform(0.18, 0.26) * (0.75 + 0.25 * normalised)
    return mask


def _add_nodule(anatomy: _Anatomy, rng: np.random.Generator, side: str, size_word: str, taken: np.ndarray) -> np.ndarray | None:
    u, v = _grid(anatomy.size)
    free = anatomy.lungs[side] & ~ndimage.binary_dilation(taken, iterations=2)
    radius = anatomy.size * rng.uniform(*{"small": (0.012, 0.018), "moderate": (0.022, 0.03), "large": (0.035, 0.045)}[size_word])
    candidates = np.argwhere(ndimage.distance_transform_edt(free) > radius + 1.5)
    if len(candidates) == 0:
        return None
    row, col = candidates[rng.integers(len(candidates))]
    distance = np.hypot((u - (col + 0.5) / anatomy.size) * anatomy.size, (v - (row + 0.5) / anatomy.size) * anatomy.size)
    mask = distance <= radius
    anatomy.image[mask] += rng.uniform(0.2, 0.3) * (1.0 - 0.35 * (distance[mask] / radius) ** 2)
    return mask


def _draw_findings(anatomy: _Anatomy, rng: np.random.Generator, present: dict[str, tuple[str, str]]) -> list[Finding]:
    """Paint the findings in a fixed order so their masks are disjoint; return them in FINDINGS order."""
    taken = {side: np.zeros_like(anatomy.body) for side in LATERALITIES}
    made: dict[str, Finding] = {}
    if "cardiomegaly" in present:
        made["cardiomegaly"] = Finding("cardiomegaly", "none", present["cardiomegaly"][1], "none", anatomy.heart, mask_box(anatomy.heart))
    painters = {"pleural_effusion": _add_effusion, "pneumothorax": _add_pneumothorax, "consolidation": _add_consolidation, "nodule": _add_nodule}
    for name, painter in painters.items():
        if name not in present:
            continue
        side, size_word = present[name]
        mask = painter(anatomy, rng, side, size_word) if name == "pleural_effusion" else painter(anatomy, rng, side, size_word, taken[side])
        if mask is None or not mask.any():
            continue
        taken[side] |= mask
        made[name] = Finding(name, side, size_word, _zone(mask, anatomy.lungs[side]), mask, mask_box(mask))
    return [made[name] for name in FINDINGS if name in made]


def make_cxr_study(index: int, seed: int = 0, size: int = 256) -> CxrStudy:
    """Generate one chest study: image, findings with masks and boxes, and its report.

    Each finding is drawn independently with probability :data:`FINDING_PREVALENCE`, with a random
    side and size; about a third of the studies have none.

    Args:
        index: the study's index; with ``seed`` it fixes everything, independently of other indices.
        seed: the dataset seed.
        size: image side in pixels (designed for 256-512; 128-1024 accepted).

    Returns:
        The :class:`CxrStudy`, image ``(H, W)`` float32 in ``[0, 1]`` with ``H = W = size``.

    Raises:
        ConfigError: if ``size`` is outside 128-1024.
    """
    size = check_size(size, CXR_SIZE_RANGE, "chest phantom")
    rng = study_rng(seed, index)
    present: dict[str, tuple[str, str]] = {}
    for name in FINDINGS:
        if rng.random() < FINDING_PREVALENCE:
            present[name] = (str(rng.choice(LATERALITIES)), str(rng.choice(SIZE_WORDS)))
    ctr = None
    if "cardiomegaly" in present:
        ctr = rng.uniform(*{"small": (0.54, 0.58), "moderate": (0.58, 0.64), "large": (0.64, 0.72)}[present["cardiomegaly"][1]])
    anatomy = _Anatomy(rng, size, ctr)
    findings = _draw_findings(anatomy, rng, present)
    image = ndimage.gaussian_filter(anatomy.image, sigma=0.6 * size / 256)
    image += rng.normal(0.0, rng.uniform(0.01, 0.02), image.shape).astype(np.float32)
    image = np.clip(rng.uniform(0.9, 1.1) * (image - 0.5) + 0.5 + rng.uniform(-0.03, 0.03), 0.0, 1.0).astype(np.float32)
    report = write_report(findings, rng, FINDINGS)
    boxes = [dict(phrase=finding.phrase, category=finding.name, **dict(zip("xywh", finding.box))) for finding in findings]
    return CxrStudy(
        id=f"cxr-{index:05d}",
        image=image,
        findings=findings,
        report=report,
        masks={finding.name: finding.mask for finding in findings},
        boxes=boxes,
        labels={name: int(any(finding.name == name for finding in findings)) for name in FINDINGS},
        anatomy={"body": anatomy.body, "lung_right": anatomy.lungs["right"], "lung_left": anatomy.lungs["left"], "heart": anatomy.heart},
        pixel_spacing_mm=350.0 / size,
    )
