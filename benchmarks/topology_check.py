"""Milliseconds to check one 565x584 vessel mask against its reference inside a field of view.

Run: ``workbench bench topology_check [--tiny]`` (or ``.venv/bin/python benchmarks/topology_check.py [--repeats 30] [--chase DIR] [--tiny]``).

Two sets of 565x584 (W x H, the DRIVE size) masks, each checked with
``check_mask(prediction, reference, fov)`` (every metric, breaks and
fragments), timed ``--repeats`` times; the median per mask and over all are
reported:

- ``chase_db1``: the 8 CHASE_DB1 test images (11L..14R), second observer vs.
  first, centre-cropped from 999x960 to 565x584 (a crop keeps the vessel
  scale a resize would change), FOV derived from the photograph;
- ``fundus_phantom``: 4 fundus phantoms drawn at 584 px and cropped to 565
  columns, the exact mask as reference and, as prediction, the mask with
  8 short cuts across vessels (so breaks are found and reported).

Results go to ``benchmarks/results/topology_check.json``. ``--tiny`` times one phantom twice and skips CHASE_DB1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from workbench.data.phantoms import make_fundus  # noqa: E402
from workbench.provenance import Provenance  # noqa: E402
from workbench_plugins.vessels.topology.check import check_mask, fov_from_fundus  # noqa: E402
from workbench_plugins.vessels.topology.masks import binarise_mask  # noqa: E402

SHAPE = (584, 565)  # (H, W)
from tests.helpers.shared_data import CHASE_DB1 as DEFAULT_CHASE  # noqa: E402  ($WORKBENCH_SHARED_DATA, else ../shared/data)
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "topology_check.json"
CHASE_TEST = ("11L", "11R", "12L", "12R", "13L", "13R", "14L", "14R")
PHANTOM_SEED = 0
BENCHMARK = {"name": "topology_check", "cpu_budget_minutes": 2, "configs": [],
             "measures": "milliseconds to check one 565x584 vessel mask against its reference (CHASE_DB1 test images, fundus phantoms)"}


def centre_crop(array: np.ndarray) -> np.ndarray:
    """The centred ``SHAPE`` window of an ``(H, W, ...)`` array."""
    top, left = (array.shape[0] - SHAPE[0]) // 2, (array.shape[1] - SHAPE[1]) // 2
    return np.ascontiguousarray(array[top: top + SHAPE[0], left: left + SHAPE[1]])


def chase_cases(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """``(name, prediction, reference, fov)`` for the CHASE_DB1 test images."""
    cases = []
    for name in CHASE_TEST:
        fov = fov_from_fundus(np.asarray(Image.open(folder / f"Image_{name}.jpg")))
        second = binarise_mask(np.asarray(Image.open(folder / f"Image_{name}_2ndHO.png")))
        first = binarise_mask(np.asarray(Image.open(folder / f"Image_{name}_1stHO.png")))
        cases.append((f"Image_{name}", centre_crop(second), centre_crop(first), centre_crop(fov)))
    return cases


def phantom_cases(n: int = 4, cuts: int = 8) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """``(name, cut mask, exact mask, fov)`` for ``n`` fundus phantoms."""
    cases = []
    for index in range(n):
        phantom = make_fundus(index, seed=PHANTOM_SEED, size=SHAPE[0])
        reference, fov = centre_crop(phantom.vessels), centre_crop(phantom.fov)
        prediction = reference.copy()
        rng = np.random.default_rng(index)
        for row, col in np.argwhere(reference)[rng.choice(int(reference.sum()), size=cuts, replace=False)]:
            prediction[max(0, row - 4): row + 5, col: col + 2] = False
        cases.append((phantom.id, prediction, reference, fov))
    return cases


def time_cases(cases: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], repeats: int) -> dict[str, Any]:
    """Median milliseconds per case and over all, with the metrics of each case."""
    per_case, all_times = [], []
    for name, prediction, reference, fov in cases:
        check_mask(prediction, reference, fov)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            report = check_mask(prediction, reference, fov)
            times.append(1000.0 * (time.perf_counter() - start))
        all_times.extend(times)
        summary = {key: value for key, value in report.to_dict().items() if key not in ("breaks", "spurious_fragments")}
        per_case.append({"name": name, "median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2), **summary})
    return {"median_ms": round(statistics.median(all_times), 2), "p90_ms": round(float(np.percentile(all_times, 90)), 2), "cases": per_case}


def run(out_path: Path, tiny: bool = False, *, chase: Path = DEFAULT_CHASE, repeats: int = 30, **_: object) -> dict[str, Any]:
    """Time the checks, write ``out_path`` with its provenance; nothing is trained, so ``work_dir``/``models``/``store`` go unused."""
    provenance = Provenance("topology_check", tiny=tiny, device="cpu")
    repeats, phantoms = (2, 1) if tiny else (repeats, 4)
    results: dict[str, Any] = {"shape_hw": list(SHAPE), "repeats": repeats}
    if not tiny:
        provenance.folder(chase, used_for="CHASE_DB1 test images, second observer vs first")
        results["chase_db1"] = time_cases(chase_cases(chase), repeats)
    provenance.phantoms("phantom-fundus", phantoms, PHANTOM_SEED, SHAPE[0], used_for="cut masks against exact ones")
    results["fundus_phantom"] = time_cases(phantom_cases(phantoms), repeats)
    provenance.write(out_path, results, scored_split="test")
    for key in ("chase_db1", "fundus_phantom"):
        if key in results:
            print(f"{key}: median {results[key]['median_ms']} ms, p90 {results[key]['p90_ms']} ms per {SHAPE[1]}x{SHAPE[0]} mask")
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the JSON, print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--chase", type=Path, default=DEFAULT_CHASE)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--tiny", action="store_true", help="one phantom, two repeats, no CHASE_DB1 (a smoke test)")
    arguments = parser.parse_args(argv)
    return run(arguments.output, arguments.tiny, chase=arguments.chase, repeats=arguments.repeats)


if __name__ == "__main__":
    main()
