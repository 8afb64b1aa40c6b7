"""CHASE_DB1: Dice+CE, Dice+CE with small components removed, soft-clDice, Skeleton Recall and the graph head, at one CPU budget.

Run: ``workbench bench vessels_chase [--tiny] [--model VARIANT=NAME[:VERSION] --store DIR]`` (or ``.venv/bin/python
benchmarks/vessels_chase.py [--budget-steps 1500] [--variants dice_ce,cldice,...] [--tiny] [KEY=VALUE ...]``)

The protocol: the first 20 images train, the last 8 test, ``_1stHO`` is the
reference and the FOV comes from a red-channel threshold (the chase-db1
builder). Every variant is one ``workbench vessels train --config
configs/vessels_chase.yaml loss.name=<loss>`` run, trained in one go into a fresh
store (same network, data, seed, patches, batch size and schedule); a network the
user names with ``--model VARIANT=NAME`` is evaluated instead of trained. "The same CPU budget":
the training steps of each variant are ``budget_steps`` scaled down by its
measured cost per step relative to Dice+CE (calibrated in this process on one
batch before the runs, so a loss that costs 30 % more per step gets 30 % fewer
steps). The small-component baseline re-scores each network with components
under ``--min-area`` pixels removed (``workbench vessels evaluate``; no
extra training): for Dice+CE it is the cheap fix any user tries first, for
the topology-aware losses it shows what they add beyond it. The second human observer (``_2ndHO``) is
scored against the first inside the same FOVs as the last row.

Results go to ``benchmarks/results/vessels_chase.json``: per variant the mean
Dice, clDice, Betti-0/1 errors, components, CAL, steps and wall seconds, with the
provenance; and a Markdown table on stdout. ``--tiny``: two variants, two steps,
two training images and one test image (a smoke test).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench_util import REPO_ROOT, run_overrides

RESULTS = REPO_ROOT / "benchmarks" / "results" / "vessels_chase.json"
CONFIG = REPO_ROOT / "configs" / "vessels_chase.yaml"
VARIANTS = ("dice_ce", "cldice", "skeleton_recall", "graph")
BENCHMARK = {"name": "vessels_chase", "models": ["dice_ce", "cldice", "skeleton_recall", "graph"], "cpu_budget_minutes": 30, "configs": ["configs/vessels_chase.yaml"],
             "measures": "CHASE_DB1 test images: Dice, clDice, Betti errors and CAL of Dice+CE, soft-clDice, Skeleton Recall and the "
                         "graph head at one CPU budget, each with small components removed, and the second observer"}
TINY = ["data.max_train=2", "data.max_eval=1", "data.patches_per_image=2", "train.batch_size=2", "train.warmup_steps=1",
        "train.checkpoint_every=2", "train.log_every=1", "inference.flips=false"]
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
    from workbench_plugins.vessels.jobs import SegmentationStep, has_graph_head

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
    from workbench_plugins.vessels.metrics import mean_metrics, score_image
    from workbench_plugins.vessels.topology.masks import fov_from_fundus
    from workbench.data.readers import read_image

    rows = []
    for record in [r for r in build_chase_db1(CHASE_DB1) if r["split"] == "test"]:
        image, _ = read_image(record["image"], intensity="stored")
        scored = score_image(record["id"], read_mask(Path(record["mask2"])), read_mask(Path(record["mask"])), fov_from_fundus(image), 10.0, 30)
        rows.append(scored.row())
    return mean_metrics(rows) | {"images": len(rows)}


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    """The comparison as a Markdown table."""
    lines = ["| variant | " + " | ".join(COLUMNS) + " | steps | train s |", "|" + "---|" * (len(COLUMNS) + 3)]
    for name, row in rows.items():
        cells = [f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row.get('steps', '')} | {row.get('train_seconds', '')} |")
    return "\n".join(lines)


def run(out_path: Path, tiny: bool = False, *, work_dir: Path = REPO_ROOT / "runs" / "bench" / "vessels_chase",
        models: dict[str, str] | None = None, store: Path | None = None, budget_steps: int = 1500, variants: list[str] | None = None,
        min_area: int = 100, overrides: list[str] = (), **_: object) -> dict[str, Any]:
    """Train each variant at the same CPU budget (or take the user's network), score the test images, write the JSON.

    Raises:
        ConfigError: CHASE_DB1 is not on this machine.
    """
    from workbench.config import load_settings
    from workbench.errors import ConfigError
    from workbench.provenance import Provenance
    from workbench_plugins.vessels.jobs import run_predict, run_train
    from workbench_plugins.vessels.settings import VesselPredictSettings, VesselTrainSettings

    if not CHASE_DB1.is_dir():
        raise ConfigError(f"CHASE_DB1 not found ({CHASE_DB1}); set WORKBENCH_SHARED_DATA")
    models, store = dict(models or {}), Path(store or work_dir / "store")
    variants = list(variants or (["dice_ce", "skeleton_recall"] if tiny else VARIANTS))
    budget_steps = 2 if tiny else budget_steps
    provenance = Provenance("vessels_chase", tiny=tiny)
    config = provenance.config(CONFIG)
    provenance.folder(CHASE_DB1, used_for="first 20 images train, last 8 test, 1stHO reference")
    builders = create_plugin_manager().datasets.builders
    common = [*run_overrides(work_dir, tiny), f"data.root={CHASE_DB1}", f"save.store={store}", *(TINY if tiny else []), *overrides]
    settings = load_settings(VesselTrainSettings, config, common)
    costs = step_seconds(list(dict.fromkeys(["dice_ce", *variants])), settings.data.patch_size, settings.train.batch_size,
                         rounds=1 if tiny else 8)
    steps = {name: max(1, round(budget_steps * costs["dice_ce"] / costs[name])) for name in variants}
    results: dict[str, Any] = {
        "config": BENCHMARK["configs"][0], "budget_steps_dice_ce": budget_steps,
        "step_seconds_calibration": {name: round(value, 4) for name, value in costs.items()},
        "cost_ratio_vs_dice_ce": {name: round(costs[name] / costs["dice_ce"], 3) for name in costs},
        "steps": steps, "overrides": list(overrides), "rows": {},
    }
    for variant in variants:
        name = f"chase-{variant}"
        network = models.get(variant)
        if network is None:
            outcome = run_train(load_settings(VesselTrainSettings, config, [*common, *variant_options(variant), f"train.steps={steps[variant]}",
                                                                              f"run.name={name}", f"save.name=vessels-chase-{variant}"]),
                                builders, progress=False)
            network = outcome.stored
            results["rows"][variant] = dict(outcome.metrics, steps=outcome.steps, train_seconds=round(outcome.seconds or 0.0, 1),
                                            run=outcome.run.path.name)
        else:
            plain = run_predict(load_settings(VesselPredictSettings, config, [*common, f"weights={network}", f"run.name={name}"]), builders,
                                score=True)
            results["rows"][variant] = dict(plain.metrics, steps=None, run=plain.run.path.name)
        provenance.model(variant, network, store, trained_here=variant not in models)
        # The cheap baseline for every variant: the same network, components under min_area pixels removed.
        cleaned = run_predict(load_settings(VesselPredictSettings, config, [*common, f"weights={network}", f"run.name={name}-cc{min_area}",
                                                                            f"inference.min_component_area={min_area}"]), builders, score=True)
        results["rows"][f"{variant} + remove components < {min_area} px"] = dict(cleaned.metrics, steps=steps[variant])
        print(f"{variant}: {results['rows'][variant]}", flush=True)
    results["rows"]["second observer (2ndHO vs 1stHO)"] = human_row()
    provenance.write(out_path, results, scored_split="test")
    print(markdown(results["rows"]))
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-steps", type=int, default=1500, help="Dice+CE's steps; the others get the same CPU time")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--min-area", type=int, default=100, help="small-component removal baseline: smallest kept component (px)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes (another file keeps the main table)")
    parser.add_argument("--tiny", action="store_true", help="two variants, two steps, two training images (a smoke test)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE passed to every run")
    args = parser.parse_args(argv)
    run(args.output, args.tiny, budget_steps=args.budget_steps, variants=[name for name in args.variants.split(",") if name],
        min_area=args.min_area, overrides=args.overrides)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
