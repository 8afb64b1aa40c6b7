"""Reconnecting a thresholded vessel mask: bridge each fragment to its neighbour along the cheapest probability path.

A thin vessel whose probability dips under the threshold for a few pixels breaks into pieces; removing the small
pieces (the cheap baseline) lowers the component count by deleting vessel, not by connecting it. Here every
component but the largest looks for the cheapest path to any other component through the probability map
(scikit-image's minimum-cost path, cost ``1 - p`` per pixel off the mask, almost nothing on it, impassable outside
the field of view) and, when that path costs at most ``max_cost``, its off-mask pixels are added to the mask. A gap
of ``n`` pixels at probability ``p`` costs about ``n (1 - p)``: ``max_cost=10`` joins a 10-pixel stretch the network
gave no support at all, or a 20-pixel stretch at 0.5. Pieces that stay isolated and small are then the false
fragments, and go.

No library does this step (MONAI's and scikit-image's morphology fill holes or drop pieces, they do not route
between them), so it is written here on ``skimage.graph.MCP_Geometric``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage
from skimage.graph import MCP_Geometric
from skimage.morphology import remove_small_objects

ON_MASK_COST = 1e-3  # walking along the mask is almost free, so a path may use other pieces as stepping stones


@dataclass
class Bridge:
    """One added link.

    Attributes:
        pixels: ``(K, 2)`` int row, column of the pixels the link adds (off the original mask).
        cost: the path's cumulative cost (``MCP_Geometric``; about the sum of ``1 - p`` over the gap).
        fragment_area: pixels of the component that looked for the link.
    """

    pixels: np.ndarray
    cost: float
    fragment_area: int


def bridge_costs(mask: np.ndarray, probability: np.ndarray, fov: np.ndarray | None = None) -> np.ndarray:
    """The per-pixel cost of a path: ``(H, W)`` float64, ``1 - p`` off the mask, ~0 on it, ``inf`` outside the FOV."""
    costs = np.where(mask, ON_MASK_COST, 1.0 - np.clip(probability.astype(np.float64), 0.0, 1.0))
    if fov is not None:
        costs[~fov.astype(bool)] = np.inf
    return costs


def bridge_gaps(mask: np.ndarray, probability: np.ndarray, fov: np.ndarray | None = None, *, max_cost: float = 10.0,
                window: int = 60) -> tuple[np.ndarray, list[Bridge]]:
    """Join each fragment of ``mask`` to its cheapest neighbour when the path through ``probability`` is cheap enough.

    Args:
        mask: ``(H, W)`` bool thresholded vessels.
        probability: ``(H, W)`` vessel probabilities in [0, 1] (finite).
        fov: ``(H, W)`` bool field of view (paths never leave it) or ``None``.
        max_cost: the most a link may cost (see the module's docstring for the scale).
        window: how far (pixels) beyond a fragment's bounding box a link is sought.

    Returns:
        ``(bridged, bridges)``: the ``(H, W)`` bool mask with the links drawn, and the :class:`Bridge` list (links are
        found on the input mask, one per fragment at most, so the order of the fragments does not matter).
    """
    mask = np.asarray(mask, dtype=bool)
    labels = cc3d.connected_components(mask.astype(np.uint8), connectivity=8)
    n_components = int(labels.max())
    bridged = mask.copy()
    if n_components < 2:
        return bridged, []
    areas = np.bincount(labels.ravel())
    largest = int(np.argmax(areas[1:])) + 1
    costs = bridge_costs(mask, probability, fov)
    height, width = mask.shape
    bridges: list[Bridge] = []
    for component, box in enumerate(ndimage.find_objects(labels), start=1):
        if component == largest or box is None:
            continue
        top, bottom = max(box[0].start - window, 0), min(box[0].stop + window, height)
        left, right = max(box[1].start - window, 0), min(box[1].stop + window, width)
        local = labels[top:bottom, left:right]
        others = (local > 0) & (local != component)
        if not others.any():
            continue
        router = MCP_Geometric(costs[top:bottom, left:right], fully_connected=True)
        cumulative, _ = router.find_costs(np.argwhere(local == component), np.argwhere(others), find_all_ends=False)
        reached = np.where(others, cumulative, np.inf)
        end = np.unravel_index(int(np.argmin(reached)), reached.shape)
        if not reached[end] <= max_cost:
            continue
        path = np.asarray(router.traceback(end))
        gap = path[local[path[:, 0], path[:, 1]] == 0]
        if len(gap):
            bridges.append(Bridge(gap + np.array([top, left]), float(reached[end]), int(areas[component])))
    for link in bridges:
        bridged[link.pixels[:, 0], link.pixels[:, 1]] = True
    return bridged, bridges


def reconnect_mask(mask: np.ndarray, probability: np.ndarray, fov: np.ndarray | None = None, *, max_cost: float = 10.0,
                   window: int = 60, min_isolated_area: int = 0) -> np.ndarray:
    """Bridge the gaps of ``mask`` (:func:`bridge_gaps`), then drop the pieces still smaller than ``min_isolated_area``.

    Args:
        mask, probability, fov, max_cost, window: as :func:`bridge_gaps`.
        min_isolated_area: 8-connected components with fewer pixels after bridging are removed (0 keeps all).

    Returns:
        ``(H, W)`` bool mask.
    """
    bridged, _ = bridge_gaps(mask, probability, fov, max_cost=max_cost, window=window)
    if min_isolated_area > 0 and bridged.any():
        bridged = remove_small_objects(bridged, max_size=min_isolated_area - 1, connectivity=2)
    return bridged
