"""Fundus-photograph-like phantoms with grown vessel trees and their exact masks.

An image is an RGB disc (the camera's field of view, black outside) with an
orange-red background that falls off towards the rim, a bright optic disc, a
darker macula, and several vessel trees rooted at the optic disc: two arcades
(artery and vein each) sweeping around the macula towards the temporal side,
and smaller nasal trees. Trees branch recursively with widths split by
Murray's law (``w^3 = w1^3 + w2^3``), taper along each segment, curve with a
random-walk curvature, and end at 1 px, the resolution limit. Arteries and
veins of the same arcade cross each other.

Each tree is a list of centreline samples (0.5 px apart) with a radius. The
vessel mask is exact: the pixels whose centre lies within the radius of a
(pixel-rounded) centreline sample, so every tree's mask is one 8-connected
piece. The image uses the same samples with a 1-px antialiasing ramp outside
that radius, so the mask is exactly the pixels of coverage >= 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

from workbench.data.phantoms_cxr import check_size, study_rng

FUNDUS_SIZE_RANGE = (64, 1024)
_FUNDUS_STREAM = 2
_STEP_PX = 0.5
_MIN_WIDTH_PX = 1.0


@dataclass
class FundusImage:
    """A synthetic fundus photograph with its exact vessel and field-of-view masks.

    Attributes:
        id: ``"fundus-0007"`` for index 7.
        image: ``(H, W, 3)`` uint8 RGB, zero outside the field of view.
        vessels: ``(H, W)`` bool, the exact vessel mask (inside ``fov``).
        fov: ``(H, W)`` bool, the circular field of view.
        tree_masks: ``(T, H, W)`` bool, one mask per vessel tree (their union is ``vessels``).
        tree_kinds: ``T`` strings, ``"artery"`` or ``"vein"``.
        optic_disc: ``(row, col, radius)`` in pixels.
        fovea: ``(row, col)`` in pixels.
    """

    id: str
    image: np.ndarray
    vessels: np.ndarray
    fov: np.ndarray
    tree_masks: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=bool))
    tree_kinds: tuple[str, ...] = ()
    optic_disc: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fovea: tuple[float, float] = (0.0, 0.0)


@lru_cache(maxsize=16)
def _disc_offsets(radius_q: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer offsets ``(dy, dx)`` within ``radius + 0.5`` px and their distances."""
    reach = int(np.ceil(radius_q + 0.5))
    dy, dx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    distance = np.hypot(dy, dx)
    keep = distance < radius_q + 0.5
    return dy[keep], dx[keep], distance[keep]


class _TreeGrower:
    """Grows one vessel tree as centreline samples ``(x, y, radius)`` inside the field of view."""

    def __init__(self, rng: np.random.Generator, fov_centre: float, fov_radius: float, fovea: tuple[float, float], fovea_clear: float):
        self.rng, self.centre, self.radius = rng, fov_centre, fov_radius
        self.fovea, self.fovea_clear = fovea, fovea_clear
        # Curvatures are per 0.5-px step; tying them to step / radius keeps the shapes the same at any size.
        self.unit = _STEP_PX / fov_radius

    def grow(self, x: float, y: float, heading: float, width: float, bend: float, budget: int) -> np.ndarray:
        """Return ``(N, 3)`` float samples ``(x, y, radius)`` of the whole tree, parents before children.

        ``budget`` is the number of further bifurcations along the main trunk; a side branch gets a
        budget of 1-3 of its own, so the tree grows like a retinal tree (a long trunk with small
        side trees) rather than a full binary tree.
        """
        rng, samples = self.rng, []
        stack = [(x, y, heading, width, bend, budget)]
        while stack:
            x, y, heading, width, bend, budget = stack.pop()
            length = self.radius * rng.uniform(0.14, 0.26) * (0.5 + 0.5 * min(width / 4.0, 1.0))
            count = max(int(length / _STEP_PX), 4)
            curvature = bend + np.cumsum(rng.normal(0.0, 5.6 * self.unit**1.5, count))
            headings = heading + np.cumsum(curvature)
            xs = x + np.cumsum(_STEP_PX * np.cos(headings))
            ys = y + np.cumsum(_STEP_PX * np.sin(headings))
            end_width = max(width * rng.uniform(0.88, 0.96), _MIN_WIDTH_PX)
            radii = np.linspace(width, end_width, count) / 2.0
            # Stop at the rim (with room for the vessel's radius) and at the avascular fovea.
            inside = (np.hypot(xs - self.centre, ys - self.centre) <= self.radius - radii - 1.5) & (
                np.hypot(xs - self.fovea[1], ys - self.fovea[0]) >= self.fovea_clear
            )
            stop = int(np.argmin(inside)) if not inside.all() else count
            samples.append(np.stack([np.r_[x, xs[:stop]], np.r_[y, ys[:stop]], np.r_[radii[0], radii[:stop]]], axis=1))
            if stop < count or budget <= 0:
                continue
            asymmetry = rng.uniform(0.35, 0.95)
            major = max(end_width / (1.0 + asymmetry**3) ** (1.0 / 3.0), _MIN_WIDTH_PX)
            minor = max(asymmetry * major, _MIN_WIDTH_PX)
            side = rng.choice((-1.0, 1.0))
            end_x, end_y, end_heading = xs[stop - 1], ys[stop - 1], headings[stop - 1]
            minor_budget = min(budget - 1, int(rng.integers(1, 4)), 0 if minor <= _MIN_WIDTH_PX else 3)
            stack.append((end_x, end_y, end_heading - side * rng.uniform(0.6, 1.1), minor, rng.normal(0.0, 0.36 * self.unit), minor_budget))
            # The trunk's arc relaxes as it leaves the disc, so arcades sweep out to the periphery.
            stack.append((end_x, end_y, end_heading + side * rng.uniform(0.05, 0.2), major, 0.75 * bend, budget - 1))
        return np.concatenate(samples, axis=0)


def _rasterise(samples: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stamp discs at the rounded samples: ``(opacity float32, mask bool, reflex bool)``, each ``(H, W)``.

    The mask holds the pixels within ``radius`` of a sample; the opacity ramps to 0 over the next
    half pixel (antialiasing) and is scaled down for thin vessels.
    """
    cols, rows = np.rint(samples[:, 0]).astype(np.int64), np.rint(samples[:, 1]).astype(np.int64)
    radii = np.maximum(np.round(samples[:, 2] * 4.0) / 4.0, 0.5)
    # One stamp per (pixel, radius): consecutive samples fall on the same pixel about twice.
    keys = np.unique(np.stack([rows * size + cols, (radii * 4).astype(np.int64)], axis=1), axis=0)
    coverage = np.zeros(size * size, dtype=np.float32)
    mask = np.zeros(size * size, dtype=bool)
    reflex = np.zeros(size * size, dtype=bool)
    for radius_code in np.unique(keys[:, 1]):
        radius = radius_code / 4.0
        pixels = keys[keys[:, 1] == radius_code, 0]
        dy, dx, distance = _disc_offsets(radius)
        targets = ((pixels // size)[:, None] + dy[None, :]) * size + (pixels % size)[:, None] + dx[None, :]
        # Thin vessels are fainter, as in photographs, yet still darker than their surroundings.
        opacity = np.clip(radius + 0.5 - distance, 0.0, 1.0) * min(0.6 + 0.2 * radius, 1.0)
        values = np.broadcast_to(opacity.astype(np.float32), targets.shape)
        np.maximum.at(coverage, targets.ravel(), values.ravel())
        mask[targets[:, distance <= radius].ravel()] = True
        if radius >= 1.75:
            reflex[targets[:, distance <= 0.3 * radius].ravel()] = True
    return coverage.reshape(size, size), mask.reshape(size, size), reflex.reshape(size, size)


def make_fundus(index: int, seed: int = 0, size: int = 256) -> FundusImage:
    """Generate one fundus image with its vessel trees and masks.

    Args:
        index: the image's index; with ``seed`` it fixes everything, independently of other indices.
        seed: the dataset seed.
        size: image side in pixels (designed for 256-584; 64-1024 accepted).

    Returns:
        The :class:`FundusImage` with ``image`` ``(size, size, 3)`` uint8 and masks ``(size, size)`` bool.

    Raises:
        ConfigError: if ``size`` is outside 64-1024.
    """
    size = check_size(size, FUNDUS_SIZE_RANGE, "fundus phantom")
    rng = study_rng(seed, index, _FUNDUS_STREAM)
    centre, fov_radius = (size - 1) / 2.0, 0.47 * size
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    rho = np.hypot(rows - centre, cols - centre) / fov_radius
    fov = rho <= 1.0
    eye = rng.choice((-1.0, 1.0))  # which side of the image the optic disc is on
    disc_radius = fov_radius * rng.uniform(0.13, 0.16)
    disc = (centre + rng.normal(0, 0.04) * fov_radius, centre + eye * rng.uniform(0.42, 0.5) * fov_radius)
    fovea = (centre + rng.normal(0, 0.04) * fov_radius, centre - eye * rng.uniform(0.15, 0.25) * fov_radius)

    grower = _TreeGrower(rng, centre, fov_radius, fovea, fovea_clear=0.07 * fov_radius)
    # Widths are set for 256 px; smaller images shrink them, larger ones widen them more slowly (DRIVE: ~8 px at 565).
    width_scale = size / 256.0 if size < 256 else max(1.0, size / 400.0)
    trees, kinds = [], []
    temporal = -eye
    for vertical in (-1.0, 1.0):  # superior and inferior arcades
        for kind, root_width, turn_radius in (("vein", rng.uniform(5.0, 6.0), rng.uniform(0.5, 0.6)), ("artery", rng.uniform(4.0, 5.0), rng.uniform(0.6, 0.75))):
            heading = np.arctan2(vertical, temporal * rng.uniform(0.15, 0.45))
            bend = np.sign(-vertical * temporal) * _STEP_PX / (turn_radius * fov_radius)
            # Artery and vein leave the disc side by side, so they run together and cross now and then.
            beside = (0.25 if kind == "vein" else -0.25) * disc_radius
            start = (
                disc[1] + 0.3 * disc_radius * np.cos(heading) - beside * np.sin(heading),
                disc[0] + 0.3 * disc_radius * np.sin(heading) + beside * np.cos(heading),
            )
            trees.append(grower.grow(*start, heading, root_width * width_scale, bend, budget=int(rng.integers(6, 9))))
            kinds.append(kind)
    for _ in range(int(rng.integers(2, 5))):  # smaller nasal trees
        heading = np.arctan2(rng.uniform(-1, 1), -temporal)
        start = (disc[1] + 0.3 * disc_radius * np.cos(heading), disc[0] + 0.3 * disc_radius * np.sin(heading))
        trees.append(grower.grow(*start, heading, rng.uniform(2.5, 3.5) * width_scale, rng.normal(0, 0.24 * grower.unit), budget=int(rng.integers(3, 6))))
        kinds.append(str(rng.choice(("artery", "vein"))))

    colour = np.array([0.82, 0.36, 0.14]) * rng.uniform(0.85, 1.1, 3)
    illumination = (1.0 - rng.uniform(0.35, 0.5) * rho**2) * (1.0 + rng.uniform(-0.08, 0.08) * (cols - centre) / fov_radius)
    texture = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma=2.0 * size / 256)
    image = (illumination * (1.0 + 0.25 * texture))[..., None] * colour
    disc_distance = np.hypot(rows - disc[0], cols - disc[1])
    disc_weight = (0.75 * np.clip((disc_radius + 1.5 - disc_distance) / 3.0, 0.0, 1.0) + 0.25 * np.clip((0.45 * disc_radius - disc_distance) / 3.0, 0.0, 1.0))[..., None]
    image = image * (1.0 - disc_weight) + disc_weight * np.array([1.0, 0.85, 0.6])
    image *= (1.0 - rng.uniform(0.2, 0.35) * np.exp(-np.hypot(rows - fovea[0], cols - fovea[1]) ** 2 / (2 * (0.1 * fov_radius) ** 2)))[..., None]

    tree_masks = np.zeros((len(trees), size, size), dtype=bool)
    darkening = np.ones((size, size, 3))
    depths = {"artery": np.array([0.3, 0.45, 0.45]), "vein": np.array([0.45, 0.6, 0.6])}
    reflex_strength = rng.uniform(0.0, 0.15)
    for number, (samples, kind) in enumerate(zip(trees, kinds)):
        opacity, mask, reflex = _rasterise(samples, size)
        tree_masks[number] = mask & fov
        darkening *= 1.0 - opacity[..., None] * depths[kind] * rng.uniform(0.85, 1.1)
        darkening *= 1.0 + reflex_strength * reflex[..., None]
    image = image * darkening + rng.normal(0.0, rng.uniform(0.008, 0.015), image.shape)
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8) * fov[..., None]
    return FundusImage(
        id=f"fundus-{index:04d}",
        image=pixels,
        vessels=tree_masks.any(axis=0),
        fov=fov,
        tree_masks=tree_masks,
        tree_kinds=tuple(kinds),
        optic_disc=(float(disc[0]), float(disc[1]), float(disc_radius)),
        fovea=(float(fovea[0]), float(fovea[1])),
    )
