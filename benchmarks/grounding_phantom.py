"""Phrase grounding on the chest phantoms' held-out split: zero-shot from a contrastive encoder, then a supervised head.

Run: ``.venv/bin/python benchmarks/grounding_phantom.py [--encoder NAME[:VERSION]] [--store DIR] [KEY=VALUE ...]``

1. The encoder: ``--encoder`` reuses a stored one; without it, one is pretrained
   with ``workbench pretrain --config configs/pretrain_phantom.yaml`` (the
   contrastive plugin, CLIP objective, ~14 CPU minutes) and stored as
   ``grounding-bench-encoder``.
2. Zero-shot: ``workbench ground evaluate --config configs/ground_phantom.yaml``
   with each method (``occlusion``, the default, and ``similarity``, BioViL's
   patch-phrase cosine): CNR, pointing game, mIoU sweep, and how often "no
   <finding>" peaks lower than the finding's phrase.
3. Supervised: ``workbench ground train --config configs/ground_train_phantom.yaml``
   on the same frozen encoder: box accuracy at IoU >= 0.5 and mIoU on the held-out split.

Each step runs in its own process. Extra ``KEY=VALUE`` arguments go to every
grounding run (e.g. ``data.max_eval=100 train.steps=300`` for a quick look).
Results go to ``benchmarks/results/grounding_phantom.json`` (rewritten after
every step): ``zero_shot_cnr``, ``zero_shot_pointing``, ``supervised_box_acc50``,
``supervised_miou`` and the details per method and category.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench_util import run_workbench

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "grounding_phantom.json"
PRETRAIN_CONFIG = REPO_ROOT / "configs" / "pretrain_phantom.yaml"
GROUND_CONFIG = REPO_ROOT / "configs" / "ground_phantom.yaml"
TRAIN_CONFIG = REPO_ROOT / "configs" / "ground_train_phantom.yaml"
BENCH_ENCODER = "grounding-bench-encoder"


def workbench(arguments: list[str]) -> tuple[Path, float]:
    """Run ``workbench ARGS``; returns (the run folder of the printed index.html, wall seconds)."""
    index, elapsed = run_workbench(arguments)
    return index.parent, elapsed


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The overall numbers and the per-category ones of a grounding run."""
    overall = metrics["overall"]
    keep = ("n", "cnr", "pointing", "miou", "box_iou", "box_acc@0.5")
    return {
        "overall": {key: overall.get(key) for key in keep},
        "miou_threshold": metrics.get("miou_threshold"),
        "negation_lower_rate": metrics.get("negation_lower_rate"),
        "per_category": {name: {key: values.get(key) for key in keep} for name, values in metrics["per_category"].items()},
        "images": metrics.get("images"), "phrases": metrics.get("phrases"), "method": metrics.get("method"),
    }


def save(results: dict[str, Any]) -> None:
    """Write the results JSON (after every step, so a stopped run keeps what it finished)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=None, help="reuse this stored encoder (name[:version]) instead of pretraining one")
    parser.add_argument("--store", default=None, help="model store folder (default: the user's)")
    parser.add_argument("--methods", default="occlusion,similarity", help="zero-shot methods, comma-separated (the first is the headline)")
    parser.add_argument("--no-supervised", action="store_true", help="skip the supervised head")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE passed to every grounding run")
    args = parser.parse_args(argv)
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}  # read before the steps below rewrite it
    store = [f"encoder.store={args.store}"] if args.store else []
    results: dict[str, Any] = {"machine": platform.platform(), "python": platform.python_version(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "overrides": args.overrides, "commands": []}

    encoder = args.encoder
    if encoder is None:
        pretrain = ["pretrain", "--config", str(PRETRAIN_CONFIG.relative_to(REPO_ROOT)), f"save.name={BENCH_ENCODER}", "run.name=grounding-bench"]
        pretrain += [f"save.store={args.store}"] if args.store else []
        _, wall = workbench(pretrain)
        encoder = f"{BENCH_ENCODER}:latest"
        results.update(pretrain_wall_s=wall, pretrain_command="workbench " + " ".join(pretrain))
    results["encoder"] = encoder

    results["zero_shot"] = {}
    for position, method in enumerate(name.strip() for name in args.methods.split(",") if name.strip()):
        command = ["ground", "evaluate", "--config", str(GROUND_CONFIG.relative_to(REPO_ROOT)), f"encoder.name={encoder}",
                   f"zero_shot.method={method}", *store, *args.overrides]
        run, wall = workbench(command)
        metrics = json.loads((run / "metrics.json").read_text())["grounding"]
        results["zero_shot"][method] = headline(metrics) | {"wall_s": wall, "run": run.name}
        results["commands"].append("workbench " + " ".join(command))
        results["encoder_resolved"] = metrics.get("encoder")
        if position == 0:
            results.update(zero_shot_method=method, zero_shot_cnr=metrics["overall"]["cnr"], zero_shot_pointing=metrics["overall"]["pointing"],
                           zero_shot_negation_lower_rate=metrics.get("negation_lower_rate"))
        save(results)
        print(f"zero-shot {method}: CNR {metrics['overall']['cnr']:.3f}, pointing {metrics['overall']['pointing']:.3f}, "
              f"mIoU {metrics['overall']['miou']:.3f}, negation lower {metrics.get('negation_lower_rate')}", flush=True)

    if args.no_supervised and previous:  # keep the head's last measured numbers (it does not depend on the zero-shot settings)
        kept = {key: previous[key] for key in ("supervised", "supervised_box_acc50", "supervised_miou") if key in previous}
        if kept:
            results.update(kept, supervised_from=f"the run of {previous.get('started')} (not rerun)")
    if not args.no_supervised:
        command = ["ground", "train", "--config", str(TRAIN_CONFIG.relative_to(REPO_ROOT)), f"encoder.name={encoder}",
                   "save.name=grounding-bench-head", *store, *args.overrides]
        run, wall = workbench(command)
        metrics = json.loads((run / "metrics.json").read_text())["grounding"]
        results["supervised"] = headline(metrics) | {"wall_s": wall, "run": run.name, "steps": metrics.get("steps"),
                                                     "train_phrases": metrics.get("train_phrases"), "stored": metrics.get("stored_model")}
        results["commands"].append("workbench " + " ".join(command))
        results.update(supervised_box_acc50=metrics["overall"].get("box_acc@0.5"), supervised_miou=metrics["overall"]["miou"])
        save(results)
        print(f"supervised: box acc@0.5 {results['supervised_box_acc50']:.3f}, mIoU {results['supervised_miou']:.3f}", flush=True)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save(results)
    print(RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
