"""CLIP, SigLIP, ConVIRT, FLAIR and COSMOS at one wall-clock budget on the chest phantoms, with a random floor.

Run: ``workbench bench contrastive_objectives [--tiny]`` (or ``.venv/bin/python benchmarks/contrastive_objectives.py
[--objectives clip,siglip,...] [--no-floor] [--tiny] [KEY=VALUE ...]``).

Budget. Each objective gets the same wall-clock budget, not the same steps: their seconds per training step are
measured in-process on one batch of the reference size (the objectives take turns step by step after warm-up, so a busy
machine slows all alike), CLIP gets the reference ``train.steps`` (``REFERENCE_BUDGET``: 400 steps at batch 64, a quarter
of the config's work) and every other objective
``round(clip_steps * clip_seconds / its_seconds)`` steps. The calibration is in the JSON (``calibration``).

Selection rule (declared before any test figure exists). Per objective, candidates: learning rate 0.5x, 1x and 2x the
config's ``train.lr`` at the default init, plus one init at 1x: for SigLIP and FLAIR the SigLIP paper's scale 10 and
bias -10 (the default is scale 10 and the prior bias -ln(B-1) of the batch, see ``losses.sigmoid_logit_init``), for CLIP
a scale of 10 instead of 1/0.07, for ConVIRT a temperature of 0.07 instead of the paper's 0.1 (COSMOS: the learning
rates only). Each candidate is a SHORT run (a quarter of its objective's steps) scored on the val split by val
image->text R@10 (retrieval only); the highest wins (the first declared on a tie). Then ONE full-budget run per objective
with the chosen setting, scored once on the test split (retrieval, zero-shot, linear probe). The floor is the same test
evaluation on the same preset with a random image tower (and the bundled MiniLM text weights). Extra ``KEY=VALUE``
arguments are passed to every run (recorded in the JSON).

Results go to ``benchmarks/results/contrastive_objectives.json``: per method the test image->text and text->image
R@1/5/10 with chance, zero-shot AUROC per finding and mean, the linear probe at 1/10/100 % of labels, steps and wall time;
``selection`` holds every objective's candidates with their val R@10 and the chosen one. ``--tiny``: two objectives,
two steps each, two candidates each, on 40 phantoms (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench_util import PRETRAIN_CONFIG, REPO_ROOT, TINY_ENCODER, TINY_TRAIN, cxr_phantoms, run_overrides, tiny_cxr_data

RESULTS = REPO_ROOT / "benchmarks" / "results" / "contrastive_objectives.json"
OBJECTIVES = ("clip", "siglip", "convirt", "flair", "cosmos")
SELECTION_SPLIT, SCORED_SPLIT, SELECTION_METRIC = "val", "test", "i2t_R@10"
GRID_FRACTION = 0.25  # a candidate's run: this share of its objective's full-budget steps
# The init candidate beside the learning rates (at 1x lr), as overrides; COSMOS has none.
INIT_CANDIDATES = {
    "siglip": {"paper init (scale 10, bias -10)": ["model.options.init_logit_scale=2.302585", "model.options.init_logit_bias=-10.0"]},
    "flair": {"paper init (scale 10, bias -10)": ["model.options.init_logit_scale=2.302585", "model.options.init_logit_bias=-10.0"]},
    "clip": {"scale 10": ["model.options.init_logit_scale=2.302585"]},
    "convirt": {"temperature 0.07": ["objective.options.temperature=0.07"]},
}
# The reference budget: 400 CLIP steps at batch 64 (the config trains 800 at 128, four times the work). At the config's
# size the table costs about 300 CPU minutes at one thread, more than one working session of this 2-core machine can
# give it beside anything else; at this size a full run is about 7 CPU minutes (about 1 s a CLIP step at batch 64) and
# the grid's 19 quarter-budget runs about 4.75 full runs plus their start-up (reading the 3000 phantoms, about 30 s
# each). With the test evaluations (zero-shot, probe) and the floor: about 100 CPU minutes. Extra KEY=VALUE arguments
# come after these, so `train.steps=800 train.batch_size=128` gives back the config's size.
REFERENCE_BUDGET = ["train.batch_size=64", "train.steps=400"]
BENCHMARK = {"name": "contrastive_objectives", "cpu_budget_minutes": 100, "configs": ["configs/pretrain_phantom.yaml"],
             "measures": "test retrieval R@k, zero-shot AUROC and linear probe of five contrastive objectives at one wall-clock "
                         "budget, learning rate and init chosen on val, with a random-encoder floor"}


def summary(metrics: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The comparison's numbers from a run's metrics."""
    retrieval = metrics.get("retrieval", {})
    probe = metrics.get("linear_probe", {})
    return {
        "pairs": metrics.get("pairs"),
        "i2t_R@1": retrieval.get("i2t_R@1"), "i2t_R@5": retrieval.get("i2t_R@5"), "i2t_R@10": retrieval.get("i2t_R@10"),
        "t2i_R@10": retrieval.get("t2i_R@10"), "chance_R@10": retrieval.get("chance_R@10"),
        "i2t_R@10_over_chance": (retrieval["i2t_R@10"] / retrieval["chance_R@10"]) if retrieval.get("chance_R@10") else None,
        "zeroshot_mean_auroc": (metrics.get("zeroshot") or {}).get("mean"),
        "zeroshot": metrics.get("zeroshot"),
        "linear_probe_mean_auroc": {share: values.get("mean") for share, values in probe.items()},
        "wall_s": round(wall_s, 1),
    }


def candidates(objective: str, lr: float, tiny: bool) -> dict[str, list[str]]:
    """The objective's candidate settings, name -> overrides (tiny: 1x and 2x lr)."""
    factors = (1.0, 2.0) if tiny else (0.5, 1.0, 2.0)
    grid = {f"lr {factor:g}x": [f"train.lr={lr * factor:g}"] for factor in factors}
    if not tiny:
        grid.update({name: [f"train.lr={lr:g}", *overrides] for name, overrides in INIT_CANDIDATES.get(objective, {}).items()})
    return grid


def step_seconds(settings_by_objective: dict[str, Any], records: list[dict], rounds: int = 6, warmup: int = 2) -> dict[str, float]:
    """Median seconds of one training step (prepare, forward, loss, backward, AdamW) per objective, on one batch.

    Args:
        settings_by_objective: objective name -> its :class:`PretrainSettings` (model, batch size, lr).
        records: training pair records; the first ``train.batch_size`` reports make the batch (images are random:
            the cost does not depend on the pixels).
        rounds: timed rounds; warmup: untimed rounds first (they also fill the frozen-text cache).

    Returns:
        ``{objective: seconds}``; the objectives take turns step by step, so a busy machine slows all alike.
    """
    import torch

    from workbench.train import build_optimizer
    from workbench_plugins.contrastive.batches import PairBatchPreparer
    from workbench_plugins.contrastive.jobs.pretrain import PretrainModule, build_encoder
    from workbench_plugins.contrastive.losses import build_objective

    setups = {}
    for objective, settings in settings_by_objective.items():
        torch.manual_seed(0)
        encoder = build_encoder(settings)
        loss = build_objective(objective, encoder, **settings.objective.options)
        module = PretrainModule(encoder, loss, PairBatchPreparer(loss, settings.objective.max_sentences, settings.objective.local_crops))
        size, batch_size = encoder.image_size, settings.train.batch_size
        texts = [str(records[index % len(records)].get("report") or "No acute process.") for index in range(batch_size)]
        batch = {"image": torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)), "report_text": texts}
        setups[objective] = (module, build_optimizer(module, settings.train), batch)
    times: dict[str, list[float]] = {objective: [] for objective in setups}
    for round_index in range(warmup + rounds):
        for objective, (module, optimizer, batch) in setups.items():
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            module(batch)["loss"].backward()
            optimizer.step()
            module.after_optimizer_step(round_index)
            if round_index >= warmup:
                times[objective].append(time.perf_counter() - started)
    return {objective: statistics.median(values) for objective, values in times.items()}


def _objective_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in OBJECTIVES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown objective(s) {unknown}; choose from {', '.join(OBJECTIVES)}")
    return names


def run(out_path: Path, tiny: bool = False, *, work_dir: Path = REPO_ROOT / "runs" / "bench" / "contrastive_objectives",
        store: Path | None = None, objectives: list[str] | None = None, floor: bool = True, overrides: list[str] = (),
        **_: object) -> dict[str, Any]:
    """Calibrate the budget, choose each objective's setting on val, score the chosen one and the floor on test, write the JSON."""
    from workbench.config import load_settings
    from workbench.host import create_plugin_manager
    from workbench.provenance import Provenance
    from workbench.selection import Selection, selection_record
    from workbench_plugins.contrastive.jobs.evaluation import run_evaluation
    from workbench_plugins.contrastive.jobs.pretrain import load_pair_records, run_pretrain
    from workbench_plugins.contrastive.settings import EvaluateSettings, PretrainSettings

    provenance = Provenance("contrastive_objectives", tiny=tiny)
    config = provenance.config(PRETRAIN_CONFIG)
    store = Path(store or work_dir / "store")
    objectives = list(objectives or (["clip", "siglip"] if tiny else OBJECTIVES))
    common = [*run_overrides(work_dir, tiny), f"save.store={store}"]
    if tiny:
        # Retrieval alone: the zero-shot prompts and the probe cost more than the two training steps.
        common += [*tiny_cxr_data(work_dir), *TINY_TRAIN, *TINY_ENCODER, "eval.zeroshot=false", "eval.linear_probe=false", "eval.examples=0"]
    else:
        common += REFERENCE_BUDGET
    common += list(overrides)
    builders = create_plugin_manager().datasets.builders

    def settings_for(objective: str, extra: list[str]) -> PretrainSettings:
        return load_settings(PretrainSettings, config, [*common, f"objective.name={objective}", *extra])

    base = {objective: settings_for(objective, []) for objective in objectives}
    train_records, _ = load_pair_records(base[objectives[0]].data, builders, Path(base[objectives[0]].run.output_root))
    seconds = step_seconds(base, train_records, rounds=1 if tiny else 6, warmup=1 if tiny else 2)
    reference = "clip" if "clip" in seconds else objectives[0]
    reference_steps = base[reference].train.steps
    steps = {objective: max(1, round(reference_steps * seconds[reference] / seconds[objective])) for objective in objectives}
    results: dict[str, Any] = {"config": PRETRAIN_CONFIG, "overrides": list(overrides), "methods": {},
                               "reference_budget": [] if tiny else list(REFERENCE_BUDGET),
                               "calibration": {"step_seconds": seconds, "reference": reference, "reference_steps": reference_steps,
                                               "steps": steps, "batch_size": base[reference].train.batch_size,
                                               "budget_seconds": round(reference_steps * seconds[reference], 1)},
                               "grid_fraction": GRID_FRACTION}

    selections: dict[str, Selection[list[str]]] = {}
    for objective in objectives:
        selection = Selection(candidates(objective, base[objective].train.lr, tiny), metric=SELECTION_METRIC, mode="max",
                              split=SELECTION_SPLIT, scored_split=SCORED_SPLIT)
        grid_steps = steps[objective] if tiny else max(1, round(steps[objective] * GRID_FRACTION))
        names = {tuple(setting): name for name, setting in selection.candidates.items()}

        def on_val(setting: list[str], objective: str = objective, grid_steps: int = grid_steps) -> float | None:
            slug = names[tuple(setting)].replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")
            settings = settings_for(objective, [*setting, f"train.steps={grid_steps}", f"data.eval_split=[{SELECTION_SPLIT}]",
                                                "eval.zeroshot=false", "eval.linear_probe=false", "eval.examples=0", "save.name=null",
                                                f"run.name=objectives-{objective}-grid-{slug}"])
            outcome = run_pretrain(settings, builders, progress=False)
            return json.loads((outcome.run.path / "metrics.json").read_text())["pretrain"].get("retrieval", {}).get(SELECTION_METRIC)

        selection.choose(on_val)
        selections[objective] = selection

        def on_test(setting: list[str], objective: str = objective) -> dict[str, Any]:
            settings = settings_for(objective, [*setting, f"train.steps={steps[objective]}", f"data.eval_split=[{SCORED_SPLIT}]",
                                                f"run.name=objectives-{objective}", f"save.name=contrastive-phantom-{objective}"])
            started = time.perf_counter()
            outcome = run_pretrain(settings, builders, progress=False)
            wall = time.perf_counter() - started
            metrics = json.loads((outcome.run.path / "metrics.json").read_text())["pretrain"]
            if outcome.stored:
                provenance.model(objective, outcome.stored, store)
            return summary(metrics, wall) | {"run": outcome.run.path.name, "steps": metrics.get("steps"), "setting": selection.chosen}

        results["methods"][objective] = selection.score(on_test)
        print(f"{objective} ({selection.chosen}, {steps[objective]} steps): {results['methods'][objective]['i2t_R@10_over_chance']}x chance "
              f"R@10, zero-shot AUROC {results['methods'][objective]['zeroshot_mean_auroc']}", flush=True)
    settings = base[objectives[-1]]
    provenance.phantoms("phantom-cxr", *cxr_phantoms(settings.data),
                        used_for=f"pretraining (train), choosing each objective's setting ({SELECTION_SPLIT}) and scoring ({SCORED_SPLIT})")
    if floor:
        pretrain = settings.model_dump(mode="json")
        pretrain["data"]["eval_split"] = [SCORED_SPLIT]
        floor_settings = load_settings(EvaluateSettings, None, ["run.name=objectives-floor"], defaults={
            "run": pretrain["run"], "data": pretrain["data"], "model": pretrain["model"]["preset"], "random": True,
            "model_options": pretrain["model"]["options"], "eval": pretrain["eval"]})
        started = time.perf_counter()
        index = run_evaluation(floor_settings, builders)
        metrics = json.loads((index.parent / "metrics.json").read_text())["eval"]
        results["methods"]["random-floor"] = summary(metrics, time.perf_counter() - started) | {"run": index.parent.name, "steps": 0}
    provenance.write(out_path, results, scored_split=SCORED_SPLIT, selection=selection_record(**selections))
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", type=_objective_list, default=None, help="comma-separated, e.g. clip,cosmos")
    parser.add_argument("--no-floor", action="store_true", help="skip the random-encoder floor")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tiny", action="store_true", help="two objectives, two steps each, on 40 phantoms (a smoke test)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE passed to every pretrain run")
    args = parser.parse_args(argv)
    run(args.out, args.tiny, objectives=args.objectives, floor=not args.no_floor, overrides=args.overrides)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
