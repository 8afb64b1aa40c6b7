"""CLIP, SigLIP, ConVIRT, FLAIR and COSMOS at the same budget on the chest phantoms, with a random floor.

Run: ``.venv/bin/python benchmarks/contrastive_objectives.py [--objectives clip,siglip,...] [--no-floor] [KEY=VALUE ...]``

Each objective is one ``workbench pretrain --config configs/pretrain_phantom.yaml
objective.name=<name>`` run (same data, seed, model, steps, batch size and
learning-rate schedule), in its own process so no state leaks between them.
The floor is ``workbench eval all`` on the same preset with a random image
tower (and the bundled MiniLM text weights). Extra ``KEY=VALUE`` arguments are
passed to every run (e.g. ``train.steps=200`` for a quick look).

Results go to ``benchmarks/results/contrastive_objectives.json`` (rewritten
after every run, so a stopped benchmark keeps what it finished): per method
the held-out image->text and text->image R@1/5/10 with chance, zero-shot AUROC
per finding and mean, the linear probe at 1/10/100 % of labels, and the wall
time of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from bench_util import run_workbench

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "contrastive_objectives.json"
CONFIG = REPO_ROOT / "configs" / "pretrain_phantom.yaml"
OBJECTIVES = ("clip", "siglip", "convirt", "flair", "cosmos")


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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", type=_objective_list, default=list(OBJECTIVES), help="comma-separated, e.g. clip,cosmos")
    parser.add_argument("--no-floor", action="store_true", help="skip the random-encoder floor")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE passed to every pretrain run")
    args = parser.parse_args(argv)
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update({
        "config": str(CONFIG.relative_to(REPO_ROOT)),
        "machine": {"cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "platform": platform.platform(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
    })
    results.setdefault("methods", {})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for objective in args.objectives:
        stale = REPO_ROOT / "runs" / f"pretrain-objectives-{objective}"
        if stale.exists():  # the benchmark's own folder from an earlier, stopped attempt: start afresh
            shutil.rmtree(stale)
        index, wall = run_workbench(["pretrain", "--config", str(CONFIG), f"objective.name={objective}", f"run.name=objectives-{objective}",
                                 f"save.name=contrastive-phantom-{objective}", *args.overrides])
        metrics = json.loads((index.parent / "metrics.json").read_text())["pretrain"]
        results["methods"][objective] = summary(metrics, wall) | {"run": index.parent.name, "steps": metrics.get("steps"), "overrides": args.overrides}
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{objective}: {json.dumps(results['methods'][objective]['i2t_R@10_over_chance'])}x chance R@10, "
              f"zero-shot AUROC {results['methods'][objective]['zeroshot_mean_auroc']}", flush=True)
    if not args.no_floor:
        data_overrides = [item for item in args.overrides if item.startswith(("data.", "run."))]
        eval_config = REPO_ROOT / "runs" / "objectives-floor.yaml"
        eval_config.parent.mkdir(parents=True, exist_ok=True)
        import yaml

        pretrain = yaml.safe_load(CONFIG.read_text())
        eval_config.write_text(yaml.safe_dump({"run": pretrain["run"], "data": pretrain["data"], "model": pretrain["model"]["preset"],
                                               "random": True, "model_options": pretrain["model"]["options"], "eval": pretrain["eval"]}))
        index, wall = run_workbench(["eval", "all", "--config", str(eval_config), "run.name=objectives-floor", *data_overrides])
        metrics = json.loads((index.parent / "metrics.json").read_text())["eval"]
        results["methods"]["random-floor"] = summary(metrics, wall) | {"run": index.parent.name, "steps": 0}
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
