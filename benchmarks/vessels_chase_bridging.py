"""CHASE_DB1: reconnecting fragments (bridging along the cheapest probability path) on the stored CHASE networks.

Run after ``benchmarks/vessels_chase.py`` (it trains and stores ``vessels-chase-<variant>``):
``.venv/bin/python benchmarks/vessels_chase_bridging.py [--variants skeleton_recall,dice_ce] [--costs 5,10,20] [--areas 100,200,300]``

For each stored network the probability maps of the 20 training and the 8 test images are predicted once (as
``workbench vessels evaluate`` does: sliding windows, nothing outside the FOV). Every post-processing setting of the
grid (mirrored passes as configs/vessels_chase.yaml says, threshold 0.5, components under ``--min-area`` px removed, fragments bridged when the path costs at most C,
pieces still under A px removed; C = none is the plain small-component baseline) is scored on both splits. The
setting is chosen on the TRAINING images only: among the settings whose Dice and clDice there are each within
``--tolerance`` (0.005) of the best, the one with the lowest Betti-0 error (topology first, at no real cost in
overlap); the choice of a second rule (highest Dice + clDice among settings with a Betti-0 error at most
``--betti0-goal``) is reported beside it. ``--from-json`` chooses again from a stored grid. Its test row,
and the whole grid, go to ``benchmarks/results/vessels_chase_bridging.json``; the chosen rows are also added to the
main table ``benchmarks/results/vessels_chase.json`` as ``<variant> + bridged ...`` (the network rows there are left
as they are). The chosen setting can be rerun with the CLI: ``workbench vessels evaluate --config
configs/vessels_chase.yaml data.root=... weights=vessels-chase-<variant>:latest inference.min_component_area=100
inference.bridge_max_cost=C inference.min_isolated_area=A``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
RESULTS = REPO_ROOT / "benchmarks" / "results" / "vessels_chase_bridging.json"
MAIN_TABLE = REPO_ROOT / "benchmarks" / "results" / "vessels_chase.json"
CONFIG = REPO_ROOT / "configs" / "vessels_chase.yaml"
KEYS = ("dice", "cldice", "betti0_error", "betti1_error", "n_components", "cal")

from tests.helpers.shared_data import CHASE_DB1  # noqa: E402
from workbench.host import create_plugin_manager  # noqa: E402


def predict_split(reference: str, records: list[dict[str, Any]], device: torch.device, flips: bool) -> list[dict[str, np.ndarray]]:
    """Probability, reference and FOV of each record under the stored network ``reference`` (as ``vessels evaluate``;
    ``flips``: averaged over four mirrored passes)."""
    from workbench.model_records import parse_ref
    from workbench.model_store import ModelStore
    from workbench_plugins.vessels.data_reading import load_inference_item
    from workbench_plugins.vessels.inference import predict_probabilities, vessel_probability

    model, stored = ModelStore().load(*parse_ref(reference), device=str(device))
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

    from workbench_plugins.vessels.scoring import mean_metrics, postprocess_mask, score_image
    from workbench_plugins.vessels.topology_repair import bridge_gaps

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


def choose(train: dict[str, dict[str, float]], tolerance: float) -> str:
    """The training-split choice: topology first at no real cost in overlap.

    Among the settings whose Dice and clDice are each within ``tolerance`` of the best on the training images, the one
    with the lowest Betti-0 error (ties: the higher Dice + clDice).
    """
    best_dice = max(row["dice"] for row in train.values())
    best_cldice = max(row["cldice"] for row in train.values())
    close = [name for name, row in train.items() if row["dice"] >= best_dice - tolerance and row["cldice"] >= best_cldice - tolerance]
    return min(close, key=lambda name: (train[name]["betti0_error"], -(train[name]["dice"] + train[name]["cldice"])))


def choose_by_goal(train: dict[str, dict[str, float]], betti0_goal: float) -> str:
    """The alternative rule, reported beside: highest Dice + clDice among settings with Betti-0 error <= goal."""
    meeting = [name for name, row in train.items() if row["betti0_error"] <= betti0_goal]
    if meeting:
        return max(meeting, key=lambda name: train[name]["dice"] + train[name]["cldice"])
    return min(train, key=lambda name: train[name]["betti0_error"])


def add_to_main_table(results: dict[str, Any], min_area: int) -> None:
    """Replace the bridged rows of the main CHASE table with the chosen settings' test rows."""
    table = json.loads(MAIN_TABLE.read_text())
    rows = {name: row for name, row in table.get("rows", {}).items() if "bridge" not in name}
    for variant, found in results["variants"].items():
        steps = rows.get(variant, {}).get("steps")
        rows[f"{variant} + {found['chosen'].removeprefix(f'remove < {min_area} px, ')}"] = (
            found["test_row"] | {"steps": steps, "source": "benchmarks/vessels_chase_bridging.py (setting chosen on training images)"})
    table["rows"] = rows
    MAIN_TABLE.write_text(json.dumps(table, indent=2) + "\n")


def record_choice(found: dict[str, Any], tolerance: float, betti0_goal: float, min_area: int) -> None:
    """Fill ``found`` (one variant's entry, with its ``grid``) with both rules' choices and the test rows."""
    grids = found["grid"]
    found["chosen"] = choose(grids["train"], tolerance)
    found["test_row"] = grids["test"][found["chosen"]]
    found["chosen_by_goal_rule"] = choose_by_goal(grids["train"], betti0_goal)
    found["goal_rule_test_row"] = grids["test"][found["chosen_by_goal_rule"]]
    found["baseline_test_row"] = grids["test"][setting_name(min_area, None, min_area)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="skeleton_recall,dice_ce,cldice,graph")
    parser.add_argument("--costs", default="5,10,20", help="bridge cost limits to try (besides no bridging)")
    parser.add_argument("--areas", default="100,200,300", help="smallest piece kept after bridging (px)")
    parser.add_argument("--min-area", type=int, default=100, help="components removed before bridging (px)")
    parser.add_argument("--betti0-goal", type=float, default=5.0, help="the alternative rule's Betti-0 goal (reported beside)")
    parser.add_argument("--tolerance", type=float, default=0.005, help="Dice/clDice within this of the best count as no loss")
    parser.add_argument("--from-json", action="store_true", help="no prediction: choose again from the grid the JSON holds")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.from_json:
        results = json.loads(args.output.read_text())
        results.update(tolerance=args.tolerance, betti0_goal=args.betti0_goal)
        for found in results["variants"].values():
            record_choice(found, args.tolerance, args.betti0_goal, results["min_area"])
        return finish(results, args)
    if not CHASE_DB1.is_dir():
        print(f"CHASE_DB1 not found ({CHASE_DB1}); set WORKBENCH_SHARED_DATA", file=sys.stderr)
        return 2
    create_plugin_manager()  # fills the model registry
    import yaml

    from workbench.devices import select_device
    from workbench_plugins.vessels.builders import build_chase_db1

    device = select_device("auto")
    flips = bool(yaml.safe_load(CONFIG.read_text())["inference"].get("flips", False))  # as the main table's evaluation
    records = build_chase_db1(CHASE_DB1)
    costs: list[float | None] = [None] + [float(value) for value in args.costs.split(",") if value]
    areas = sorted({args.min_area} | {int(value) for value in args.areas.split(",") if value})
    results: dict[str, Any] = {"protocol": "setting chosen on the 20 training images, reported on the 8 test images",
                               "min_area": args.min_area, "flips": flips, "tolerance": args.tolerance, "betti0_goal": args.betti0_goal,
                               "device": str(device), "variants": {}}
    for variant in [name for name in args.variants.split(",") if name]:
        started = time.perf_counter()
        reference = f"vessels-chase-{variant}:latest"
        grids = {split: score_grid(predict_split(reference, [r for r in records if r["split"] == split], device, flips), args.min_area, costs, areas)
                 for split in ("train", "test")}
        found = results["variants"][variant] = {"model": reference, "grid": grids}
        record_choice(found, args.tolerance, args.betti0_goal, args.min_area)
        found["seconds"] = round(time.perf_counter() - started, 1)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{variant}: chosen on train: {found['chosen']}; test {json.dumps(found['test_row'])}", flush=True)
    return finish(results, args)


def finish(results: dict[str, Any], args: argparse.Namespace) -> int:
    """Write the JSON, print the chosen rows, and update the main table (default output only)."""
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    for variant, found in results["variants"].items():
        print(f"{variant}: {found['chosen']}: {json.dumps(found['test_row'])}; by the goal rule {found['chosen_by_goal_rule']}: "
              f"{json.dumps(found['goal_rule_test_row'])}")
    if MAIN_TABLE.is_file() and args.output == RESULTS:
        add_to_main_table(results, results["min_area"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
