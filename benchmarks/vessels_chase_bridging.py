"""CHASE_DB1: reconnecting fragments (bridging along the cheapest probability path) on CHASE vessel networks.

Run: ``workbench bench vessels_chase_bridging [--tiny] [--model VARIANT=NAME[:VERSION] --store DIR]`` (or
``.venv/bin/python benchmarks/vessels_chase_bridging.py [--variants skeleton_recall,dice_ce] [--costs 5,10,20]
[--areas 100,200,300] [--tiny]``).

Each variant's network is trained in one go from ``configs/vessels_chase.yaml`` (``loss.name=<variant>``, the
config's steps) into a fresh store, unless the user names a stored one. For each network the probability maps of the 20 training and the 8 test images are predicted once (as
``workbench vessels evaluate`` does: sliding windows, nothing outside the FOV). Every post-processing setting of the
grid (mirrored passes as configs/vessels_chase.yaml says, threshold 0.5, components under ``--min-area`` px removed, fragments bridged when the path costs at most C,
pieces still under A px removed; C = none is the plain small-component baseline) is scored on the training images. The
setting is chosen there, by a rule fixed beforehand: among the settings whose Dice and clDice are each within
``--tolerance`` (0.005) of the best, the one with the lowest Betti-0 error (topology first, at no real cost in
overlap). The test images are then scored once with the chosen setting, and once with the plain small-component
baseline (C = none) beside it. The training grid, the choice and the test rows go to
``benchmarks/results/vessels_chase_bridging.json`` with the provenance. The chosen setting can be rerun with the CLI: ``workbench vessels evaluate --config
configs/vessels_chase.yaml data.root=... weights=vessels-chase-<variant>:latest inference.min_component_area=100
inference.bridge_max_cost=C inference.min_isolated_area=A``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
RESULTS = REPO_ROOT / "benchmarks" / "results" / "vessels_chase_bridging.json"
BENCHMARK = {"name": "vessels_chase_bridging", "models": ["skeleton_recall", "dice_ce", "cldice", "graph"], "cpu_budget_minutes": 45, "configs": ["configs/vessels_chase.yaml"],
             "measures": "CHASE_DB1 test images after fragment bridging chosen on the training images: Dice, clDice, Betti-0 error "
                         "per network, against small-component removal alone"}
CONFIG = REPO_ROOT / "configs" / "vessels_chase.yaml"
KEYS = ("dice", "cldice", "betti0_error", "betti1_error", "n_components", "cal")

from tests.helpers.shared_data import CHASE_DB1  # noqa: E402
from workbench.host import create_plugin_manager  # noqa: E402


def predict_split(reference: str, store: Path | None, records: list[dict[str, Any]], device: torch.device,
                  flips: bool) -> list[dict[str, np.ndarray]]:
    """Probability, reference and FOV of each record under the network ``reference`` in ``store`` (as ``vessels evaluate``;
    ``flips``: averaged over four mirrored passes)."""
    from workbench.model_records import parse_ref
    from workbench.model_store import ModelStore
    from workbench_plugins.vessels.data_reading import load_inference_item
    from workbench_plugins.vessels.inference import predict_probabilities, vessel_probability

    model, stored = ModelStore(store).load(*parse_ref(reference), device=str(device))
    model.eval()
    roi = int(stored.extra.get("roi_size") or 256)
    normalisation = str(stored.preprocessing.extra.get("normalisation", "fov"))
    maps = []
    for record in records:
        item = load_inference_item(record, with_reference=True, normalisation=normalisation)
        probability = vessel_probability(predict_probabilities(model, item["image"], roi, 0.25, 4, device, source=str(record["image"]),
                                                               flips=flips))
        probability = probability[0].float().cpu().numpy()
        maps.append({"id": record["id"], "probability": np.where(item["fov"], probability, 0.0).astype(np.float32),
                     "reference": item["reference"], "fov": item["fov"]})
    return maps


def score_grid(maps: list[dict[str, np.ndarray]], min_area: int, costs: list[float | None], areas: list[int]) -> dict[str, dict[str, float]]:
    """Mean metrics of every ``(cost, area)`` setting over ``maps``: ``{setting name: {metric: value}}``."""
    from skimage.morphology import remove_small_objects

    from workbench_plugins.vessels.metrics import mean_metrics, postprocess_mask, score_image
    from workbench_plugins.vessels.topology.repair import bridge_gaps

    rows: dict[str, list[dict[str, Any]]] = {}
    for item in maps:
        base = postprocess_mask(item["probability"], 0.5, min_area)
        for cost in costs:
            bridged = bridge_gaps(base, item["probability"], item["fov"], max_cost=cost)[0] if cost is not None else base
            for area in areas:
                mask = remove_small_objects(bridged, max_size=area - 1, connectivity=2) if area > min_area else bridged
                row = score_image(item["id"], mask, item["reference"], item["fov"], 10.0, 30).row()
                rows.setdefault(setting_name(min_area, cost, area), []).append(row)
    return {name: {key: round(value, 4) for key, value in mean_metrics(group).items() if key in KEYS} for name, group in rows.items()}


def setting_name(min_area: int, cost: float | None, area: int) -> str:
    """A row's name, e.g. ``remove < 100 px, bridge cost <= 10, isolated < 200 px removed``."""
    parts = [f"remove < {min_area} px"]
    if cost is not None:
        parts.append(f"bridge cost <= {cost:g}")
    if area > min_area:
        parts.append(f"isolated < {area} px removed")
    return ", ".join(parts)


def run(out_path: Path, tiny: bool = False, *, work_dir: Path = REPO_ROOT / "runs" / "bench" / "vessels_chase_bridging",
        models: dict[str, str] | None = None, store: Path | None = None, variants: list[str] | None = None,
        costs: list[float] = (5.0, 10.0, 20.0), areas: list[int] = (100, 200, 300), min_area: int = 100, tolerance: float = 0.005,
        **_: object) -> dict[str, Any]:
    """Train (or take) each variant's network, choose the post-processing on the training images, score test once.

    Raises:
        ConfigError: CHASE_DB1 is not on this machine.
    """
    from bench_util import run_overrides
    from vessels_chase import TINY, variant_options
    from workbench.config import load_settings
    from workbench.devices import select_device
    from workbench.errors import ConfigError
    from workbench.provenance import Provenance
    from workbench.selection import Selection
    from workbench_plugins.vessels.builders import build_chase_db1
    from workbench_plugins.vessels.jobs import run_train
    from workbench_plugins.vessels.settings import VesselTrainSettings

    if not CHASE_DB1.is_dir():
        raise ConfigError(f"CHASE_DB1 not found ({CHASE_DB1}); set WORKBENCH_SHARED_DATA")
    models, store = dict(models or {}), Path(store or work_dir / "store")
    variants = list(variants or (["skeleton_recall"] if tiny else ["skeleton_recall", "dice_ce", "cldice", "graph"]))
    provenance = Provenance("vessels_chase_bridging", tiny=tiny)
    config = provenance.config(CONFIG)
    provenance.folder(CHASE_DB1, used_for="first 20 images train (and choose), last 8 test")
    builders = create_plugin_manager().datasets.builders
    common = [*run_overrides(work_dir, tiny), f"data.root={CHASE_DB1}", f"save.store={store}",
              *([*TINY, "train.steps=2"] if tiny else [])]
    settings = load_settings(VesselTrainSettings, config, common)
    device = select_device(settings.run.device)
    flips = settings.inference.flips  # as the main table's evaluation
    records = build_chase_db1(CHASE_DB1)
    splits = {split: [record for record in records if record["split"] == split][: (2 if split == "train" else 1) if tiny else None]
              for split in ("train", "test")}
    costs_tried: list[float | None] = [None, *[float(cost) for cost in costs]]
    areas_tried = sorted({min_area, *[int(area) for area in areas]})
    grid = {setting_name(min_area, cost, area): (cost, area) for cost in costs_tried for area in areas_tried}
    baseline = setting_name(min_area, None, min_area)
    results: dict[str, Any] = {"protocol": "setting chosen on the training images, reported once on the test images",
                               "min_area": min_area, "flips": flips, "tolerance": tolerance, "device": str(device), "variants": {}}
    selections = {}
    for variant in variants:
        started = time.perf_counter()
        network = models.get(variant)
        if network is None:
            network = run_train(load_settings(VesselTrainSettings, config, [*common, *variant_options(variant), f"run.name=bridging-{variant}",
                                                                              f"save.name=vessels-chase-{variant}"]), builders, progress=False).stored
        provenance.model(variant, network, store, trained_here=variant not in models)
        train_grid = score_grid(predict_split(network, store, splits["train"], device, flips), min_area, costs_tried, areas_tried)
        best_dice = max(row["dice"] for row in train_grid.values())
        best_cldice = max(row["cldice"] for row in train_grid.values())
        selection = Selection(grid, metric="betti0_error", mode="min", split="train", scored_split="test",
                              rule=f"min betti0_error on train among settings with Dice and clDice within {tolerance} of the best")

        def close_betti0(setting: tuple[float | None, int]) -> float | None:
            row = train_grid[setting_name(min_area, *setting)]
            return row["betti0_error"] if row["dice"] >= best_dice - tolerance and row["cldice"] >= best_cldice - tolerance else None

        selection.choose(close_betti0)
        test_maps = predict_split(network, store, splits["test"], device, flips)
        test_row = selection.score(lambda setting: score_grid(test_maps, min_area, [setting[0]], [setting[1]]))
        baseline_row = score_grid(test_maps, min_area, [None], [min_area])[baseline]
        results["variants"][variant] = {"model": network, "train_grid": train_grid, "chosen": selection.chosen,
                                        "test_row": next(iter(test_row.values())), "baseline_test_row": baseline_row,
                                        "seconds": round(time.perf_counter() - started, 1)}
        selections[variant] = selection
        print(f"{variant}: chosen on train: {selection.chosen}; test {results['variants'][variant]['test_row']}", flush=True)
    from workbench.selection import selection_record

    provenance.write(out_path, results, scored_split="test", selection=selection_record(**selections))
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="skeleton_recall,dice_ce,cldice,graph")
    parser.add_argument("--costs", default="5,10,20", help="bridge cost limits to try (besides no bridging)")
    parser.add_argument("--areas", default="100,200,300", help="smallest piece kept after bridging (px)")
    parser.add_argument("--min-area", type=int, default=100, help="components removed before bridging (px)")
    parser.add_argument("--tolerance", type=float, default=0.005, help="Dice/clDice within this of the best count as no loss")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--tiny", action="store_true", help="one variant, two steps, two training images and one test image")
    args = parser.parse_args(argv)
    run(args.output, args.tiny, variants=[name for name in args.variants.split(",") if name],
        costs=[float(value) for value in args.costs.split(",") if value], areas=[int(value) for value in args.areas.split(",") if value],
        min_area=args.min_area, tolerance=args.tolerance)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
