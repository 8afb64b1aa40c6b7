"""CHASE_DB1: Dice+CE, soft-clDice, Skeleton Recall and the graph head at one CPU budget, post-processing chosen on val.

Run: ``workbench bench vessels_chase [--tiny] [--model VARIANT=NAME[:VERSION] --store DIR]`` (or ``.venv/bin/python
benchmarks/vessels_chase.py [--budget-steps 1500] [--variants dice_ce,cldice,...] [--tiny] [KEY=VALUE ...]``)

Splits (the chase-db1 builder with ``val_subjects: 2``): subjects 01..08 (16 images) train, 09..10 (4 images)
validate, 11..14 (8 images) test; ``_1stHO`` is the reference and the FOV comes from a red-channel threshold.

Training: every variant is one ``workbench vessels train --config configs/vessels_chase.yaml loss.name=<loss>
data.options={reference: 1stHO, val_subjects: 2} data.train_split=[train] data.eval_split=[]`` run, trained in one
go into a fresh store (same network, data, seed, patches, batch size and schedule; the job scores no held-out image).
A network the user names with ``--model VARIANT=NAME`` is taken instead (it should have been trained on subjects
01..08 only, or the choice below is made on its training images). "The same CPU budget": the training steps of each
variant are ``budget_steps`` scaled down by its measured cost per step relative to Dice+CE (calibrated in this
process on one batch before the runs, so a loss that costs 30 % more per step gets 30 % fewer steps).

Post-processing, chosen on the 4 val images: each network's probability maps are predicted once with mirroring off
and once with it on (four mirrored passes averaged), and every setting of the grid :data:`GRID` is scored on them:
mirroring {off, on} x {nothing removed; components under 100 px removed; components under 100 px removed, then
fragments bridged along the cheapest probability path when it costs at most 5, 10 or 20, and the pieces still under
100, 200 or 300 px removed}: 22 settings, the plainer declared first (mirroring off before on, removal before
bridging, lower costs and areas first). The rule, fixed before any test image is scored (:data:`RULE`): among the
val settings whose Dice and clDice are each within 0.005 of the best val Dice and the best val clDice, the one with
the lowest val Betti-0 error; ties go to the first declared. One :class:`workbench.selection.Selection` per variant.

Test: each variant is scored once on the 8 test images with its chosen setting (``Selection.score``). Beside it, as
a fixed baseline (not chosen), the plain network: no mirroring, nothing removed. The second human observer
(``_2ndHO``) is scored against the first inside the same FOVs as the last row. A chosen setting reruns with the CLI:
``workbench vessels evaluate --config configs/vessels_chase.yaml data.root=... weights=vessels-chase-<variant>:latest``
plus the overrides stored under ``chosen.<variant>.cli``.

Results go to ``benchmarks/results/vessels_chase.json``: ``rows`` (per variant its test row with the val-chosen
setting, named by ``rows.<variant>``, and the plain test row; then the second observer), ``val_grids`` (per variant
every setting's val row, in declared order), ``chosen`` (per variant the setting, its CLI overrides and the network),
the step calibration, steps and seconds (prediction and scoring, per variant), with the provenance and the
selections; and a Markdown table on stdout. ``--tiny``: two variants, two steps, two training images, one val and
one test image (a smoke test).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_util import REPO_ROOT, run_overrides

RESULTS = REPO_ROOT / "benchmarks" / "results" / "vessels_chase.json"
CONFIG = REPO_ROOT / "configs" / "vessels_chase.yaml"
VARIANTS = ("dice_ce", "cldice", "skeleton_recall", "graph")
# cpu_budget_minutes (minutes on a 2-core CPU), estimated from the parts: training is 1500 Dice+CE steps' worth of
# CPU time per variant, at 0.15-0.17 s a step (batch 8, 128 px; the step calibration of earlier runs), so ~4.3 min a variant
# and ~19 min for four with data loading and checkpoints. Predicting a 999x960 image takes ~0.7 s without mirroring and
# ~2 s with it, and scoring one setting ~0.4 s (timed here on a tiny run's network, one thread): per variant the 4 val images twice
# (~11 s), the 22-setting grid on them (~4 s per image and mirroring, bridging included: ~35 s), the 8 test images once
# or twice (~6-22 s) and their two scorings (~10 s): ~1.5 min, ~6 min for four. The calibration and the second
# observer's row take under a minute: ~26 min in all, declared as 30.
BENCHMARK = {"name": "vessels_chase", "models": ["dice_ce", "cldice", "skeleton_recall", "graph"], "cpu_budget_minutes": 30, "configs": ["configs/vessels_chase.yaml"],
             "measures": "CHASE_DB1 test images: Dice, clDice, Betti errors and CAL of Dice+CE, soft-clDice, Skeleton Recall and the "
                         "graph head at one CPU budget, each with its post-processing (mirroring, small-component removal, bridging) "
                         "chosen on val subjects 09-10 and with none, and the second observer"}
DATA = ["data.options={reference: 1stHO, val_subjects: 2}", "data.train_split=[train]", "data.eval_split=[]"]
TINY = ["data.max_train=2", "data.patches_per_image=2", "train.batch_size=2", "train.warmup_steps=1", "train.checkpoint_every=2",
        "train.log_every=1"]
COLUMNS = ("dice", "cldice", "betti0_error", "betti1_error", "n_components", "reference_components", "cal")
MIN_AREA, BRIDGE_COSTS, ISOLATED_AREAS, TOLERANCE = 100, (5.0, 10.0, 20.0), (100, 200, 300), 0.005
RULE = (f"on val: among the settings whose Dice and clDice are each within {TOLERANCE} of the best val Dice and the best val "
        f"clDice, the lowest Betti-0 error (ties: the first declared, plainer settings first)")

from tests.helpers.shared_data import CHASE_DB1  # noqa: E402
from workbench.host import create_plugin_manager  # noqa: E402


def setting_name(setting: dict[str, Any]) -> str:
    """A setting's name, e.g. ``flips, remove < 100 px, bridge cost <= 10, isolated < 200 px removed``."""
    parts = ["flips" if setting["flips"] else "no flips"]
    parts.append(f"remove < {setting['min_component_area']} px" if setting["min_component_area"] else "nothing removed")
    if setting["bridge_max_cost"] is not None:
        parts.append(f"bridge cost <= {setting['bridge_max_cost']:g}")
    if setting["min_isolated_area"] > setting["min_component_area"]:
        parts.append(f"isolated < {setting['min_isolated_area']} px removed")
    return ", ".join(parts)


def post_processing_grid() -> dict[str, dict[str, Any]]:
    """The declared candidates, plainer first: ``{name: {flips, min_component_area, bridge_max_cost, min_isolated_area}}``
    (the keys are ``inference.*`` settings of the vessel jobs)."""
    settings = []
    for flips in (False, True):
        settings += [{"flips": flips, "min_component_area": area, "bridge_max_cost": None, "min_isolated_area": 0} for area in (0, MIN_AREA)]
        settings += [{"flips": flips, "min_component_area": MIN_AREA, "bridge_max_cost": cost, "min_isolated_area": isolated}
                     for cost in BRIDGE_COSTS for isolated in ISOLATED_AREAS]
    return {setting_name(setting): setting for setting in settings}


GRID = post_processing_grid()
PLAIN = setting_name({"flips": False, "min_component_area": 0, "bridge_max_cost": None, "min_isolated_area": 0})


def cli_overrides(setting: dict[str, Any]) -> str:
    """The ``inference.*`` overrides that make ``workbench vessels evaluate`` apply ``setting``."""
    return " ".join(f"inference.{key}={'null' if value is None else str(value).lower() if isinstance(value, bool) else value}"
                    for key, value in setting.items())


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


def predict_maps(reference: str, store: Path, records: list[dict[str, Any]], device: torch.device, flips: bool,
                 inference: Any) -> list[dict[str, Any]]:
    """Probability, reference and FOV of each record under the network ``reference`` in ``store``, as ``vessels evaluate``.

    Args:
        reference: ``name:vN`` of the stored network.
        store: the model store.
        records: the builder's records (``image``, ``mask``, ``fov``).
        device: where the network runs.
        flips: average four mirrored passes (else one pass).
        inference: the config's inference settings (``overlap``, ``sw_batch_size``; the window is the stored network's).

    Returns:
        Per record ``{"id", "probability": (H, W) float32 (0 outside the FOV), "reference": (H, W) bool, "fov": (H, W) bool}``.
    """
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
        probability = vessel_probability(predict_probabilities(model, item["image"], roi, inference.overlap, inference.sw_batch_size, device,
                                                               source=str(record["image"]), flips=flips))
        probability = probability[0].float().cpu().numpy()
        maps.append({"id": record["id"], "probability": np.where(item["fov"], probability, 0.0).astype(np.float32),
                     "reference": item["reference"], "fov": item["fov"]})
    return maps


def score_settings(maps: list[dict[str, Any]], settings: dict[str, dict[str, Any]], threshold: float) -> dict[str, dict[str, float]]:
    """Mean metrics over ``maps`` of each post-processing setting (all predicted with the same mirroring).

    A setting's mask is :func:`~workbench_plugins.vessels.metrics.postprocess_mask` with its ``min_component_area``,
    ``bridge_max_cost`` and ``min_isolated_area`` (as ``vessels evaluate``); the thresholded, cleaned and bridged masks
    are shared between the settings that share those steps.

    Returns:
        ``{setting name: {metric: mean}}`` over :data:`COLUMNS`, rounded to 4 places.
    """
    from skimage.morphology import remove_small_objects

    from workbench_plugins.vessels.metrics import mean_metrics, postprocess_mask, score_image
    from workbench_plugins.vessels.topology.repair import bridge_gaps

    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
    for item in maps:
        cleaned: dict[int, np.ndarray] = {}
        bridged: dict[tuple[int, float | None], np.ndarray] = {}
        for name, setting in settings.items():
            area, cost, isolated = setting["min_component_area"], setting["bridge_max_cost"], setting["min_isolated_area"]
            if area not in cleaned:
                cleaned[area] = postprocess_mask(item["probability"], threshold, area)
            if (area, cost) not in bridged:
                bridged[area, cost] = (bridge_gaps(cleaned[area], item["probability"], item["fov"], max_cost=cost)[0]
                                       if cost is not None and cleaned[area].any() else cleaned[area])
            mask = bridged[area, cost]
            if isolated > area and mask.any():
                mask = remove_small_objects(mask, max_size=isolated - 1, connectivity=2)
            rows[name].append(score_image(item["id"], mask, item["reference"], item["fov"], 10.0, 30).row())
    return {name: {key: round(value, 4) for key, value in mean_metrics(group).items() if key in COLUMNS} for name, group in rows.items()}


def val_grid(network: str, store: Path, val: list[dict[str, Any]], device: torch.device, inference: Any) -> dict[str, dict[str, float]]:
    """Every setting of :data:`GRID` scored on the val records (the maps predicted once per mirroring): ``{name: {metric: mean}}``
    in declared order."""
    scored: dict[str, dict[str, float]] = {}
    for flips in (False, True):
        maps = predict_maps(network, store, val, device, flips, inference)
        scored.update(score_settings(maps, {name: setting for name, setting in GRID.items() if setting["flips"] == flips}, inference.threshold))
    return {name: scored[name] for name in GRID}


def choose_on_val(grid: dict[str, dict[str, float]], variant: str) -> Any:
    """The variant's :class:`~workbench.selection.Selection`, chosen on ``grid`` (val) by :data:`RULE`."""
    from workbench.selection import Selection

    selection = Selection(GRID, metric="betti0_error", mode="min", split="val", scored_split="test", rule=RULE)
    best_dice, best_cldice = max(row["dice"] for row in grid.values()), max(row["cldice"] for row in grid.values())

    def betti0_if_close(setting: dict[str, Any]) -> float | None:
        row = grid[setting_name(setting)]
        return row["betti0_error"] if row["dice"] >= best_dice - TOLERANCE and row["cldice"] >= best_cldice - TOLERANCE else None

    selection.choose(betti0_if_close)
    print(f"{variant}: chosen on val: {selection.chosen}", flush=True)
    return selection


def test_rows(selection: Any, network: str, store: Path, test: list[dict[str, Any]], device: torch.device,
              inference: Any) -> tuple[dict[str, float], dict[str, float]]:
    """The test rows of one network: its val-chosen setting (scored once, through ``selection``) and the plain network.

    The test maps are predicted without mirroring once (the plain row, and the chosen row when it mirrors nothing),
    and with mirroring only when the chosen setting asks for it.

    Returns:
        ``(chosen setting's mean metrics, plain network's mean metrics)``.
    """
    plain_maps = predict_maps(network, store, test, device, False, inference)

    def score_chosen(setting: dict[str, Any]) -> dict[str, float]:
        maps = predict_maps(network, store, test, device, True, inference) if setting["flips"] else plain_maps
        return score_settings(maps, {"chosen": setting}, inference.threshold)["chosen"]

    chosen_row = selection.score(score_chosen)
    return chosen_row, score_settings(plain_maps, {PLAIN: GRID[PLAIN]}, inference.threshold)[PLAIN]


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
    lines = ["| row | " + " | ".join(COLUMNS) + " | steps | train s |", "|" + "---|" * (len(COLUMNS) + 3)]
    for name, row in rows.items():
        cells = [f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in COLUMNS]
        label = f"{name} ({row['setting']})" if "setting" in row else name
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row.get('steps', '')} | {row.get('train_seconds', '')} |")
    return "\n".join(lines)


def run(out_path: Path, tiny: bool = False, *, work_dir: Path = REPO_ROOT / "runs" / "bench" / "vessels_chase",
        models: dict[str, str] | None = None, store: Path | None = None, budget_steps: int = 1500, variants: list[str] | None = None,
        overrides: list[str] = (), **_: object) -> dict[str, Any]:
    """Train each variant at the same CPU budget (or take the user's network), choose its post-processing on val, score test once.

    Raises:
        ConfigError: CHASE_DB1 is not on this machine.
    """
    from workbench.config import load_settings
    from workbench.devices import select_device
    from workbench.errors import ConfigError
    from workbench.jobs import build_records, split_records
    from workbench.provenance import Provenance
    from workbench.selection import selection_record
    from workbench_plugins.vessels.jobs import run_train
    from workbench_plugins.vessels.settings import VesselTrainSettings

    if not CHASE_DB1.is_dir():
        raise ConfigError(f"CHASE_DB1 not found ({CHASE_DB1}); set WORKBENCH_SHARED_DATA")
    models, store = dict(models or {}), Path(store or work_dir / "store")
    variants = list(variants or (["dice_ce", "skeleton_recall"] if tiny else VARIANTS))
    budget_steps = 2 if tiny else budget_steps
    provenance = Provenance("vessels_chase", tiny=tiny)
    config = provenance.config(CONFIG)
    provenance.folder(CHASE_DB1, used_for="subjects 01-08 (16 images) train, 09-10 (4 images) val (post-processing chosen there), "
                                          "11-14 (8 images) test (scored once per variant), 1stHO reference")
    builders = create_plugin_manager().datasets.builders
    common = [*run_overrides(work_dir, tiny), f"data.root={CHASE_DB1}", f"save.store={store}", *DATA, *(TINY if tiny else []), *overrides]
    settings = load_settings(VesselTrainSettings, config, common)
    device = select_device(settings.run.device)
    records = build_records(settings.data.dataset, settings.data.root, settings.data.options, builders, Path(settings.run.output_root))
    val, test = split_records(records, ["val"])[: 1 if tiny else None], split_records(records, ["test"])[: 1 if tiny else None]
    costs = step_seconds(list(dict.fromkeys(["dice_ce", *variants])), settings.data.patch_size, settings.train.batch_size,
                         rounds=1 if tiny else 8)
    steps = {name: max(1, round(budget_steps * costs["dice_ce"] / costs[name])) for name in variants}
    results: dict[str, Any] = {
        "config": BENCHMARK["configs"][0], "data": DATA, "budget_steps_dice_ce": budget_steps,
        "step_seconds_calibration": {name: round(value, 4) for name, value in costs.items()},
        "cost_ratio_vs_dice_ce": {name: round(costs[name] / costs["dice_ce"], 3) for name in costs},
        "steps": steps, "overrides": list(overrides), "device": str(device), "images": {"val": len(val), "test": len(test)},
        "rule": RULE, "chosen": {}, "val_grids": {}, "seconds": {}, "rows": {},
    }
    selections = {}
    for variant in variants:
        network, trained = models.get(variant), {"steps": None}
        if network is None:
            outcome = run_train(load_settings(VesselTrainSettings, config, [*common, *variant_options(variant), f"train.steps={steps[variant]}",
                                                                              f"run.name=chase-{variant}", f"save.name=vessels-chase-{variant}"]),
                                builders, progress=False)
            network = outcome.stored
            trained = {"steps": outcome.steps, "train_seconds": round(outcome.seconds or 0.0, 1), "run": outcome.run.path.name}
        provenance.model(variant, network, store, trained_here=variant not in models)
        started = time.perf_counter()
        grid = val_grid(network, store, val, device, settings.inference)
        results["val_grids"][variant] = [dict(row, setting=name) for name, row in grid.items()]  # a list: the declared order survives
        selection = selections[variant] = choose_on_val(grid, variant)
        chosen_row, plain_row = test_rows(selection, network, store, test, device, settings.inference)
        results["rows"][variant] = dict(chosen_row, setting=selection.chosen, **trained)
        results["rows"][f"{variant} plain ({PLAIN})"] = dict(plain_row, steps=trained["steps"])
        results["chosen"][variant] = {"name": selection.chosen, "setting": GRID[selection.chosen], "cli": cli_overrides(GRID[selection.chosen]),
                                      "model": network}
        results["seconds"][variant] = round(time.perf_counter() - started, 1)
        print(f"{variant}: test {results['rows'][variant]}", flush=True)
    results["rows"]["second observer (2ndHO vs 1stHO)"] = human_row()
    provenance.write(out_path, results, scored_split="test", selection=selection_record(**selections))
    print(markdown(results["rows"]))
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-steps", type=int, default=1500, help="Dice+CE's steps; the others get the same CPU time")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes (another file keeps the main table)")
    parser.add_argument("--tiny", action="store_true", help="two variants, two steps, two training images, one val and one test image")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE passed to every run")
    args = parser.parse_args(argv)
    run(args.output, args.tiny, budget_steps=args.budget_steps, variants=[name for name in args.variants.split(",") if name],
        overrides=args.overrides)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
