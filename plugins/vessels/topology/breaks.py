"""Where a vessel mask is likely broken, and which pieces of it are spurious.

A *likely break* is a gap a reader would bridge by eye: two skeleton end
points that belong to different components and lie within a distance of each
other. Candidate pairs come from a k-d tree (``scipy.spatial.cKDTree``) and
are taken closest first, each end point and each pair of components at most
once, so one gap is reported once even when spurs leave several end points
near it. A *spurious fragment* is a small component that the reference does
not touch (without a reference: any small component but the largest one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class Break:
    """A likely break between end points ``a`` and ``b`` (pixel indices, rows first).

    Attributes:
        a, b: ``[row, col]`` (``[slice, row, col]`` in 3-D) of the two end points.
        distance: their Euclidean distance in pixels.
        components: the component labels of ``a`` and ``b``.
    """

    a: tuple[int, ...]
    b: tuple[int, ...]
    distance: float
    components: tuple[int, int]

    def to_dict(self) -> dict[str, object]:
        """``{"a": [row, col], "b": [row, col], "distance": float}``."""
        return {"a": list(self.a), "b": list(self.b), "distance": round(self.distance, 3)}


@dataclass(frozen=True)
class Fragment:
    """A small component judged spurious.

    Attributes:
        label: its component label in the prediction's labelling.
        area: its size in pixels.
        centroid: ``[row, col]`` (``[slice, row, col]`` in 3-D), floats.
        bbox: ``[row0, col0, row1, col1]`` (start inclusive, stop exclusive; 3-D adds the slice axis first).
    """

    label: int
    area: int
    centroid: tuple[float, ...]
    bbox: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        """``{"area", "centroid", "bbox"}`` as plain lists and numbers."""
        return {"area": self.area, "centroid": [round(value, 2) for value in self.centroid], "bbox": list(self.bbox)}


def skeleton_end_points(skeleton: np.ndarray) -> np.ndarray:
    """Skeleton pixels with at most one skeleton neighbour (8-neighbourhood; 26 in 3-D).

    An isolated skeleton pixel (a dot-sized component) is its own two ends and is included.

    Args:
        skeleton: ``(H, W)`` or ``(D, H, W)`` bool.

    Returns:
        ``(N, ndim)`` int array of end point indices, in raster order.
    """
    points = np.argwhere(skeleton)
    if len(points) == 0:
        return np.zeros((0, skeleton.ndim), dtype=np.int64)
    # Neighbours counted at the skeleton's own pixels only (a skeleton is a tiny share of the array; a convolution
    # over the whole of a 256^3 volume took 0.6 s): each of the 3^ndim - 1 offsets looked up in a one-pixel-padded copy.
    padded = np.pad(skeleton.astype(bool), 1)
    inside = points + 1
    neighbours = np.zeros(len(points), dtype=np.int64)
    for offset in np.ndindex(*(3,) * skeleton.ndim):
        if any(step != 1 for step in offset):
            neighbours += padded[tuple(inside[:, axis] + step - 1 for axis, step in enumerate(offset))]
    return points[neighbours <= 1]  # 0: isolated, 1: one neighbour


def find_breaks(skeleton: np.ndarray, labels: np.ndarray, max_distance: float = 10.0) -> list[Break]:
    """Pairs of skeleton end points of different components within ``max_distance``.

    Args:
        skeleton: ``(H, W)`` or ``(D, H, W)`` bool skeleton of the mask.
        labels: same-shape component labels of the mask (the skeleton lies inside it).
        max_distance: the largest gap, in pixels, still called a break.

    Returns:
        The breaks, closest first; each end point and each pair of components appears at most once.
    """
    end_points = skeleton_end_points(skeleton)
    if len(end_points) < 2 or max_distance <= 0:
        return []
    owners = labels[tuple(end_points.T)]
    pairs = cKDTree(end_points).query_pairs(r=float(max_distance), output_type="ndarray")
    if len(pairs) == 0:
        return []
    pairs = pairs[owners[pairs[:, 0]] != owners[pairs[:, 1]]]
    distances = np.linalg.norm(end_points[pairs[:, 0]] - end_points[pairs[:, 1]], axis=1)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], distances))
    used_points: set[int] = set()
    linked: set[tuple[int, int]] = set()
    breaks: list[Break] = []
    for index in order:
        first, second = (int(value) for value in pairs[index])
        components = tuple(sorted((int(owners[first]), int(owners[second]))))
        if first in used_points or second in used_points or components in linked:
            continue
        used_points.update((first, second))
        linked.add(components)
        breaks.append(Break(a=tuple(int(v) for v in end_points[first]), b=tuple(int(v) for v in end_points[second]),
                            distance=float(distances[index]), components=(int(owners[first]), int(owners[second]))))
    return breaks


def find_spurious_fragments(labels: np.ndarray, count: int, max_area: int = 30, reference: np.ndarray | None = None) -> list[Fragment]:
    """Small components that are likely false positives.

    With a reference: components of at most ``max_area`` pixels that share no
    pixel with it. Without: components of at most ``max_area`` pixels other
    than the largest component (a mask that is one small piece has no fragment).

    Args:
        labels: ``(H, W)`` or ``(D, H, W)`` component labels 0..count.
        count: the number of components.
        max_area: the largest area, in pixels, still called a fragment.
        reference: same-shape bool reference mask, or None.

    Returns:
        The fragments, largest first.
    """
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    small = areas <= max_area
    small[0] = False
    if reference is not None:
        small &= np.bincount(labels[reference], minlength=count + 1) == 0
    else:
        small[int(np.argmax(areas[1:])) + 1] = False
    chosen = np.flatnonzero(small)
    if len(chosen) == 0:
        return []
    boxes = ndimage.find_objects(labels, max_label=int(chosen.max()))
    centroids = ndimage.center_of_mass(np.ones(labels.shape, dtype=np.uint8), labels, chosen)
    fragments = []
    for label, centroid in zip(chosen, centroids):
        box = boxes[label - 1]
        bbox = tuple(int(part.start) for part in box) + tuple(int(part.stop) for part in box)
        fragments.append(Fragment(label=int(label), area=int(areas[label]), centroid=tuple(float(v) for v in centroid), bbox=bbox))
    return sorted(fragments, key=lambda fragment: (-fragment.area, fragment.bbox))
