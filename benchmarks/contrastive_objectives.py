"""CLIP, SigLIP, ConVIRT, FLAIR and COSMOS at the same budget on the chest phantoms, with a random floor.

Run: ``workbench bench contrastive_objectives [--tiny]`` (or ``.venv/bin/python benchmarks/contrastive_objectives.py
[--objectives clip,siglip,...] [--no-floor] [--tiny] [KEY=VALUE ...]``).

Each objective is one pretraining run of ``configs/pretrain_phantom.yaml`` with ``objective.name=<name>`` (same
data, seed, model, steps, batch size and learning-rate schedule), trained from scratch in one go and scored on the
test split. The floor is the same evaluation on the same preset with a random image tower (and the bundled MiniLM
text weights). Extra ``KEY=VALUE`` arguments are passed to every run (recorded in the JSON).

Results go to ``benchmarks/results/contrastive_objectives.json``: per method the test image->text and text->image
R@1/5/10 with chance, zero-shot AUROC per finding and mean, the linear probe at 1/10/100 % of labels, and the wall
time of the run. ``--tiny``: two objectives, two steps each, on 40 phantoms (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench_util import PRETRAIN_CONFIG, REPO_ROOT, TINY_ENCODER, TINY_TRAIN, cxr_phantoms, run_overrides, tiny_cxr_data

RESULTS = REPO_ROOT / "benchmarks" / "results" / "contrastive_objectives.json"
OBJECTIVES = ("clip", "siglip", "convirt", "flair", "cosmos")
SCORED_SPLIT = "test"
BENCHMARK = {"name": "contrastive_objectives", "cpu_budget_minutes": 80, "configs": ["configs/pretrain_phantom.yaml"],
             "measures": "test retrieval R@k, zero-shot AUROC and linear probe of five contrastive objectives at one budget, "
                         "with a random-encoder floor"}


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


def _objective_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in OBJECTIVES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown objective(s) {unknown}; choose from {', '.join(OBJECTIVES)}")
    return names


def run(out_path: Path, tiny: bool = False, *, work_dir: Path = REPO_ROOT / "runs" / "bench" / "contrastive_objectives",
        store: Path | None = None, objectives: list[str] | None = None, floor: bool = True, overrides: list[str] = (),
        **_: object) -> dict[str, Any]:
    """Pretrain each objective from the config in one go, evaluate it and the random floor on the test split, write the JSON."""
    from workbench.config import load_settings
    from workbench.host import create_plugin_manager
    from workbench.provenance import Provenance
    from workbench_plugins.contrastive.jobs.evaluation import run_evaluation
    from workbench_plugins.contrastive.jobs.pretrain import run_pretrain
    from workbench_plugins.contrastive.settings import EvaluateSettings, PretrainSettings

    provenance = Provenance("contrastive_objectives", tiny=tiny)
    config = provenance.config(PRETRAIN_CONFIG)
    store = Path(store or work_dir / "store")
    objectives = list(objectives or (["clip", "siglip"] if tiny else OBJECTIVES))
    common = [*run_overrides(work_dir, tiny), f"save.store={store}", f"data.eval_split=[{SCORED_SPLIT}]"]
    if tiny:
        # Retrieval alone: the zero-shot prompts and the probe cost more than the two training steps.
        common += [*tiny_cxr_data(work_dir), *TINY_TRAIN, *TINY_ENCODER, "eval.zeroshot=false", "eval.linear_probe=false", "eval.examples=0"]
    common += list(overrides)
    builders = create_plugin_manager().datasets.builders
    results: dict[str, Any] = {"config": PRETRAIN_CONFIG, "overrides": list(overrides), "methods": {}}
    for objective in objectives:
        settings = load_settings(PretrainSettings, config, [*common, f"objective.name={objective}", f"run.name=objectives-{objective}",
                                                            f"save.name=contrastive-phantom-{objective}"])
        started = time.perf_counter()
        outcome = run_pretrain(settings, builders, progress=False)
        wall = time.perf_counter() - started
        metrics = json.loads((outcome.run.path / "metrics.json").read_text())["pretrain"]
        results["methods"][objective] = summary(metrics, wall) | {"run": outcome.run.path.name, "steps": metrics.get("steps")}
        if outcome.stored:
            provenance.model(objective, outcome.stored, store)
        print(f"{objective}: {json.dumps(results['methods'][objective]['i2t_R@10_over_chance'])}x chance R@10, "
              f"zero-shot AUROC {results['methods'][objective]['zeroshot_mean_auroc']}", flush=True)
    provenance.phantoms("phantom-cxr", *cxr_phantoms(settings.data), used_for="pretraining (train) and scoring (test)")
    if floor:
        pretrain = settings.model_dump(mode="json")
        floor_settings = load_settings(EvaluateSettings, None, ["run.name=objectives-floor"], defaults={
            "run": pretrain["run"], "data": pretrain["data"], "model": pretrain["model"]["preset"], "random": True,
            "model_options": pretrain["model"]["options"], "eval": pretrain["eval"]})
        started = time.perf_counter()
        index = run_evaluation(floor_settings, builders)
        metrics = json.loads((index.parent / "metrics.json").read_text())["eval"]
        results["methods"]["random-floor"] = summary(metrics, time.perf_counter() - started) | {"run": index.parent.name, "steps": 0}
    provenance.write(out_path, results, scored_split=SCORED_SPLIT)
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
