"""How the cost of ``workbench check-topology`` grows with the mask: 565x584, 2048x2048, 128^3 and 256^3.

Run: ``workbench bench topology_scaling [--tiny]`` (or ``.venv/bin/python benchmarks/topology_scaling.py [--tiny]``).

Each case is a vessel tree with its exact mask as the reference and, as the prediction, the same mask with short
cuts across vessels (so breaks and extra components are found and reported, as on a real prediction):

- 2-D: fundus phantoms drawn at 584 px (cropped to 565 columns, the DRIVE size) and at 1024 px, enlarged 2x2 to 2048 px
  (the generator's largest size; vessels twice as wide);
- 3-D: a branching tree of tubes in a cube of 128^3 and 256^3 voxels (:func:`vessel_tree_3d`), the kind of
  mask a CT angiography segmentation gives.

``check_mask(prediction, reference)`` (every metric, breaks and fragments) is timed ``repeats`` times per case
(more for the small ones) and the median, the fastest and the slowest are reported with the voxels per second.
Results: ``benchmarks/results/topology_scaling.json``; targets 565x584 <= 50 ms, 256^3 <= 3 s.
``--tiny``: a 64 px image and a 32^3 cube, once each (a smoke test).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import binary_dilation, generate_binary_structure, iterate_structure

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from workbench.data.phantoms import make_fundus  # noqa: E402
from workbench.provenance import Provenance  # noqa: E402
from workbench_plugins.vessels.topology.check import check_mask  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "topology_scaling.json"
BENCHMARK = {"name": "topology_scaling", "cpu_budget_minutes": 5, "configs": [],
             "measures": "check-topology seconds for a 565x584 and a 2048x2048 mask and a 128^3 and 256^3 volume"}
SEED = 0
TARGETS_S = {"2d_565x584": 0.05, "3d_256": 3.0}


def vessel_tree_3d(side: int, seed: int = SEED, depth: int = 6) -> np.ndarray:
    """A ``(side, side, side)`` bool volume holding one branching tree of tubes.

    The trunk enters at the centre of the top face; every segment runs a random direction (kept pointing away from
    its parent's start), then splits in two, for ``depth`` generations, with the tube radius shrinking from
    ``side / 40`` to one voxel. Centrelines are drawn voxel by voxel, then each generation is dilated by a ball of
    its radius (scipy), so the tubes are solid and connected where they branch.
    """
    rng = np.random.default_rng(seed)
    volume = np.zeros((side, side, side), dtype=bool)
    radius0 = max(1.0, side / 40)
    segments: list[tuple[np.ndarray, np.ndarray, int]] = []  # (start, end, generation)
    stack = [(np.array([2.0, side / 2, side / 2]), np.array([1.0, 0.0, 0.0]), 0)]
    while stack:
        start, direction, generation = stack.pop()
        length = side * 0.35 * (0.75 ** generation) * rng.uniform(0.8, 1.2)
        end = np.clip(start + direction * length, 1, side - 2)
        segments.append((start, end, generation))
        if generation + 1 < depth:
            for _ in range(2):
                turn = rng.normal(0, 0.7, size=3)
                child = direction + turn
                child /= np.linalg.norm(child) or 1.0
                stack.append((end, child, generation + 1))
    for generation in range(depth):
        centrelines = np.zeros_like(volume)
        for start, end, segment_generation in segments:
            if segment_generation != generation:
                continue
            count = int(np.ceil(np.linalg.norm(end - start))) + 1
            points = np.round(np.linspace(start, end, count)).astype(int)
            centrelines[points[:, 0], points[:, 1], points[:, 2]] = True
        radius = max(1, int(round(radius0 * (0.7 ** generation))))
        ball = iterate_structure(generate_binary_structure(3, 1), radius)
        volume |= binary_dilation(centrelines, structure=ball)
    return volume


def cut(mask: np.ndarray, cuts: int, seed: int = SEED) -> np.ndarray:
    """A copy of ``mask`` with ``cuts`` small cubes (or squares) cleared at random foreground points: breaks."""
    rng = np.random.default_rng(seed + 1)
    prediction = mask.copy()
    points = np.argwhere(mask)
    half = max(1, round(min(mask.shape) / 100))
    for index in rng.choice(len(points), size=min(cuts, len(points)), replace=False):
        window = tuple(slice(max(0, int(c) - half), int(c) + half + 1) for c in points[index])
        prediction[window] = False
    return prediction


def cases(tiny: bool) -> list[tuple[str, np.ndarray, int]]:
    """``(name, reference mask, repeats)`` of every case."""
    if tiny:
        fundus = make_fundus(0, seed=SEED, size=64).vessels
        return [("2d_64x64", fundus, 1), ("3d_32", vessel_tree_3d(32, depth=3), 1)]
    drive = make_fundus(0, seed=SEED, size=584).vessels[:, :565]
    # the phantom generator stops at 1024 px: its largest tree, each pixel repeated 2x2 (vessels twice as wide)
    large = make_fundus(0, seed=SEED, size=1024).vessels.repeat(2, axis=0).repeat(2, axis=1)
    return [("2d_565x584", drive, 15), ("2d_2048x2048", large, 5), ("3d_128", vessel_tree_3d(128), 5), ("3d_256", vessel_tree_3d(256), 3)]


def time_case(reference: np.ndarray, repeats: int) -> dict[str, Any]:
    """Seconds of ``check_mask(cut prediction, reference)``: median, fastest, slowest; the report's counts."""
    prediction = cut(reference, cuts=8)
    seconds, report = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        report = check_mask(prediction, reference)
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    return {"shape": list(reference.shape), "voxels": int(reference.size), "foreground": int(reference.sum()), "repeats": repeats,
            "median_s": round(median, 4), "min_s": round(min(seconds), 4), "max_s": round(max(seconds), 4),
            "megavoxels_per_s": round(reference.size / median / 1e6, 2),
            "components": report.n_components, "reference_components": report.reference_components, "breaks": len(report.breaks),
            "dice": round(float(report.dice), 4), "cldice": round(float(report.cldice), 4)}


def run(out_path: Path, tiny: bool = False, **_: object) -> dict[str, Any]:
    """Time every case, write ``out_path`` with its provenance (nothing is trained)."""
    provenance = Provenance("topology_scaling", tiny=tiny, device="cpu")
    results: dict[str, Any] = {"what": "seconds of check_mask(prediction with 8 cuts, exact reference), every metric, breaks and "
                                       "fragments included", "cases": {}}
    for name, reference, repeats in cases(tiny):
        provenance.phantoms("phantom-fundus" if name.startswith("2d") else "vessel-tree-3d", 1, SEED, max(reference.shape),
                            used_for=f"case {name}")
        results["cases"][name] = row = time_case(reference, repeats)
        print(f"{name}: median {row['median_s']} s ({row['megavoxels_per_s']} Mvoxel/s), {row['breaks']} breaks found")
    results["targets_s"] = TARGETS_S
    results["met"] = {name: results["cases"][name]["median_s"] <= limit for name, limit in TARGETS_S.items() if name in results["cases"]}
    provenance.write(out_path, results, scored_split="none (speed)")
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the JSON, print each case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--tiny", action="store_true", help="a 64 px image and a 32^3 cube, once each (a smoke test)")
    arguments = parser.parse_args(argv)
    return run(arguments.output, arguments.tiny)


if __name__ == "__main__":
    main()
