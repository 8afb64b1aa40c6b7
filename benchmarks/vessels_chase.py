"""CHASE_DB1: Dice+CE, Dice+CE with small components removed, soft-clDice, Skeleton Recall and the graph head, at one CPU budget.

Run: ``.venv/bin/python benchmarks/vessels_chase.py [--budget-steps 1500] [--variants dice_ce,cldice,...] [KEY=VALUE ...]``

The protocol: the first 20 images train, the last 8 test, ``_1stHO`` is the
reference and the FOV comes from a red-channel threshold (the chase-db1
builder). Every variant is one ``workbench vessels train --config
configs/vessels_chase.yaml loss.name=<loss>`` run in its own process (same
network, data, seed, patches, batch size and schedule). "The same CPU budget":
the training steps of each variant are ``budget_steps`` scaled down by its
measured cost per step relative to Dice+CE (calibrated in this process on one
batch before the runs, so a loss that costs 30 % more per step gets 30 % fewer
steps). The small-component baseline re-scores each network with components
under ``--min-area`` pixels removed (``workbench vessels evaluate``; no
extra training): for Dice+CE it is the cheap fix any user tries first, for
the topology-aware losses it shows what they add beyond it. The second human observer (``_2ndHO``) is
scored against the first inside the same FOVs as the last row.

``--evaluate-only`` skips training and re-evaluates the stored networks with the
config's current inference settings (e.g. after test-time mirroring was switched on).

Results go to ``benchmarks/results/vessels_chase.json`` (rewritten after every
row): per variant the mean Dice, clDice, Betti-0/1 errors, components, CAL,
steps and wall seconds; and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench_util import run_workbench

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
RESULTS = REPO_ROOT / "benchmarks" / "results" / "vessels_chase.json"
CONFIG = REPO_ROOT / "configs" / "vessels_chase.yaml"
VARIANTS = ("dice_ce", "cldice", "skeleton_recall", "graph")
COLUMNS = ("dice", "cldice", "betti0_error", "betti1_error", "n_components", "reference_components", "cal")

from tests.helpers.shared_data import CHASE_DB1  # noqa: E402
from workbench.host import create_plugin_manager  # noqa: E402


def variant_options(variant: str) -> list[str]:
    """The config overrides of one variant (the graph head needs its network option)."""
    options = [f"loss.name={variant}"]
    if variant == "graph":
        options.append("model.options.graph_head={tile: 8}")
    return options


def step_seconds(variants: list[str], patch: int, batch: int, rounds: int = 8) -> dict[str, float]:
    """Median seconds of one training step (forward, loss, backward, AdamW) per variant, on one random batch.

    The variants take turns step by step (after two warm-up rounds), so a busy machine slows all of them alike.
    """
    import yaml

    from workbench.registry import create_model
    from workbench_plugins.vessels.losses import build_vessel_loss
    from workbench_plugins.vessels.run import SegmentationStep, has_graph_head

    config = yaml.safe_load(CONFIG.read_text())
    label = (torch.rand(batch, 1, patch, patch) > 0.85).float()
    batch_dict = {"image": torch.rand(batch, 3, patch, patch), "label": label, "tube": label, "fov": torch.ones_like(label)}
    setups = {}
    for variant in variants:
        options = dict(config["model"]["options"] or {})
        if variant == "graph":
            options["graph_head"] = {"tile": 8}
        torch.manual_seed(0)
        model = create_model(config["model"]["name"], **options)
        setups[variant] = (model, SegmentationStep(build_vessel_loss(variant), has_graph_head(model)), torch.optim.AdamW(model.parameters(), lr=1e-3))
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    for round_index in range(rounds + 2):
        for variant, (model, step, optimizer) in setups.items():
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            step(model, batch_dict)["loss"].backward()
            optimizer.step()
            if round_index >= 2:
                times[variant].append(time.perf_counter() - started)
    return {variant: statistics.median(values) for variant, values in times.items()}


def human_row() -> dict[str, Any]:
    """The second observer against the first on the 8 test images, inside the derived FOVs."""
    from workbench_plugins.vessels.builders import build_chase_db1
    from workbench_plugins.vessels.check import read_mask
    from workbench_plugins.vessels.scoring import mean_metrics, score_image
    from workbench_plugins.vessels.topology_masks import fov_from_fundus
    from workbench.data.readers import read_image

    rows = []
    for record in [r for r in build_chase_db1(CHASE_DB1) if r["split"] == "test"]:
        image, _ = read_image(record["image"], intensity="stored")
        scored = score_image(record["id"], read_mask(Path(record["mask2"])), read_mask(Path(record["mask"])), fov_from_fundus(image), 10.0, 30)
        rows.append(scored.row())
    return mean_metrics(rows) | {"images": len(rows)}


def evaluate_rows(variant: str, min_area: int, name: str, overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored network's mean metrics on the test images as they are, and with components under ``min_area`` removed."""
    common = ["--config", str(CONFIG), f"data.root={CHASE_DB1}", f"weights=vessels-chase-{variant}:latest"]
    rows = []
    for area in (0, min_area):
        index, _ = run_workbench(["vessels", "evaluate", *common, f"inference.min_component_area={area}",
                                  f"run.name={name}-cc{area}", *overrides])
        rows.append(json.loads((index.parent / "metrics.json").read_text())["mean"])
    return rows[0], rows[1]


def reevaluate(variants: list[str], min_area: int, output: Path, overrides: list[str]) -> int:
    """``--evaluate-only``: rewrite the network and small-component rows of ``output`` from the stored networks."""
    results = json.loads(output.read_text())
    results["evaluated_again"] = {"inference": yaml_inference(), "overrides": overrides}
    for variant in variants:
        kept = results["rows"].get(variant, {})
        training = {key: kept[key] for key in ("steps", "train_seconds", "wall_s", "run") if key in kept}
        plain, cleaned = evaluate_rows(variant, min_area, f"chase-{variant}-again-{int(time.time())}", overrides)
        results["rows"][variant] = plain | training
        results["rows"][f"{variant} + remove components < {min_area} px"] = cleaned | {"steps": training.get("steps")}
        output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{variant}: {json.dumps(results['rows'][variant])}", flush=True)
    print(markdown(results["rows"]))
    return 0


def yaml_inference() -> dict[str, Any]:
    """The config's inference section (what the evaluation used)."""
    import yaml

    return dict(yaml.safe_load(CONFIG.read_text())["inference"])


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    """The comparison as a Markdown table."""
    lines = ["| variant | " + " | ".join(COLUMNS) + " | steps | train s |", "|" + "---|" * (len(COLUMNS) + 3)]
    for name, row in rows.items():
        cells = [f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row.get('steps', '')} | {row.get('train_seconds', '')} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-steps", type=int, default=1500, help="Dice+CE's steps; the others get the same CPU time")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--min-area", type=int, default=100, help="small-component removal baseline: smallest kept component (px)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes (another file keeps the main table)")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="no training: re-evaluate the stored vessels-chase-<variant>:latest networks with the config's current "
                             "inference settings, keeping the steps and training seconds the JSON already holds")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE passed to every run")
    args = parser.parse_args(argv)
    output = args.output
    if not CHASE_DB1.is_dir():
        print(f"CHASE_DB1 not found ({CHASE_DB1}); set WORKBENCH_SHARED_DATA", file=sys.stderr)
        return 2
    variants = [name for name in args.variants.split(",") if name]
    create_plugin_manager()  # fills the model registry
    if args.evaluate_only:
        return reevaluate(variants, args.min_area, output, args.overrides)
    import yaml

    config = yaml.safe_load(CONFIG.read_text())
    patch, batch = int(config["data"]["patch_size"]), int(config["train"]["batch_size"])
    costs = step_seconds(list(dict.fromkeys(["dice_ce", *variants])), patch, batch)
    steps = {name: max(1, round(args.budget_steps * costs["dice_ce"] / costs[name])) for name in variants}
    results: dict[str, Any] = {
        "config": str(CONFIG.relative_to(REPO_ROOT)), "budget_steps_dice_ce": args.budget_steps,
        "step_seconds_calibration": {name: round(value, 4) for name, value in costs.items()},
        "cost_ratio_vs_dice_ce": {name: round(costs[name] / costs["dice_ce"], 3) for name in costs},
        "steps": steps, "overrides": args.overrides,
        "machine": {"cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "platform": platform.platform(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "rows": {},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    common = ["--config", str(CONFIG), f"data.root={CHASE_DB1}"]
    for variant in variants:
        name = f"chase-{variant}-{int(time.time())}"
        index, wall = run_workbench(["vessels", "train", *common, *variant_options(variant), f"train.steps={steps[variant]}",
                                 f"run.name={name}", f"save.name=vessels-chase-{variant}", *args.overrides])
        metrics = json.loads((index.parent / "metrics.json").read_text())
        results["rows"][variant] = metrics["mean"] | {"steps": metrics["steps"], "train_seconds": metrics["train_seconds"],
                                                      "wall_s": round(wall, 1), "run": index.parent.name}
        # The cheap baseline for every variant: the same network, components under --min-area pixels removed.
        index, _ = run_workbench(["vessels", "evaluate", *common, f"weights=vessels-chase-{variant}:latest",
                                  f"inference.min_component_area={args.min_area}", f"run.name={name}-cc{args.min_area}", *args.overrides])
        metrics = json.loads((index.parent / "metrics.json").read_text())
        results["rows"][f"{variant} + remove components < {args.min_area} px"] = metrics["mean"] | {"steps": steps[variant]}
        output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{variant}: {json.dumps(results['rows'][variant])}", flush=True)
    results["rows"]["second observer (2ndHO vs 1stHO)"] = human_row()
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results["rows"]))
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
