"""Phrase grounding on the chest phantoms: zero-shot from a contrastive encoder, then a supervised head, scored on test.

Run: ``workbench bench grounding_phantom [--tiny] [--model encoder=NAME[:VERSION] --store DIR]``
(or ``.venv/bin/python benchmarks/grounding_phantom.py [--tiny] [KEY=VALUE ...]``).

1. The encoder: pretrained in one go from ``configs/pretrain_phantom.yaml`` (~14 CPU minutes) into a fresh store,
   unless the user names a stored one.
2. Zero-shot, ``configs/ground_phantom.yaml``: the occlusion window set is chosen among :data:`WINDOW_CANDIDATES`
   by the rule "max pointing on val", and the mIoU threshold by "max mIoU on val" (the chosen window's sweep);
   then the test split is scored once with both fixed. The patch-similarity method (BioViL's cosine; nothing to
   tune) is scored on test beside it. Metrics: CNR, pointing game, mIoU, box acc@0.5, and how often "no <finding>"
   peaks lower than the finding's phrase.
3. Supervised, ``configs/ground_train_phantom.yaml`` on the same frozen encoder: box acc@0.5 and mIoU on test.

Extra ``KEY=VALUE`` arguments go to every grounding run. Results: ``benchmarks/results/grounding_phantom.json``
with ``zero_shot_cnr``, ``zero_shot_pointing``, ``supervised_box_acc50``, ``supervised_miou``, the details per
method and category, the selection record and the provenance.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench_util import REPO_ROOT, TINY_TRAIN, cxr_phantoms, pretrain_encoder, run_overrides, tiny_cxr_data

RESULTS = REPO_ROOT / "benchmarks" / "results" / "grounding_phantom.json"
GROUND_CONFIG = "configs/ground_phantom.yaml"
TRAIN_CONFIG = "configs/ground_train_phantom.yaml"
SELECTION_SPLIT, SCORED_SPLIT = "val", "test"
# The occluding window sets tried (fractions of the encoder's input side); the config's own is always a candidate.
WINDOW_CANDIDATES = {"two": [0.25, 0.125], "three": [0.5, 0.25, 0.125], "three-mid": [0.375, 0.25, 0.125]}
# CPU budget: the committed run (benchmarks/results/grounding_phantom.json, 2 threads) took 77 CPU minutes, the encoder's
# 800 pretraining steps most of it.
BENCHMARK = {"name": "grounding_phantom", "models": ["encoder"], "cpu_budget_minutes": 80,
             "configs": ["configs/pretrain_phantom.yaml", "configs/ground_phantom.yaml", "configs/ground_train_phantom.yaml"],
             "measures": "phrase grounding on the test phantoms: zero-shot CNR and pointing (window set chosen on val), "
                         "supervised head box acc@0.5 and mIoU"}


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


def run(out_path: Path, tiny: bool = False, *, work_dir: Path = REPO_ROOT / "runs" / "bench" / "grounding_phantom",
        models: dict[str, str] | None = None, store: Path | None = None, overrides: list[str] = (), supervised: bool = True,
        **_: object) -> dict[str, Any]:
    """Pretrain (or take) the encoder, choose the zero-shot settings on val, score test once, train and score the head."""
    from workbench.config import load_settings
    from workbench.host import create_plugin_manager
    from workbench.provenance import Provenance
    from workbench.selection import Selection, selection_record
    from workbench_plugins.grounding.jobs.ground import run_ground_evaluate
    from workbench_plugins.grounding.settings import GroundSettings, GroundTrainSettings
    from workbench_plugins.grounding.jobs.train import run_ground_train

    models, store = dict(models or {}), Path(store or work_dir / "store")
    provenance = Provenance("grounding_phantom", tiny=tiny)
    encoder, pretrain = pretrain_encoder(provenance, work_dir, store, tiny, models, name="grounding-bench-encoder")
    common = [*run_overrides(work_dir, tiny), f"encoder.name={encoder}", f"encoder.store={store}"]
    common += [*tiny_cxr_data(work_dir), "examples=0", "data.max_eval=2"] if tiny else []
    common += list(overrides)
    builders = create_plugin_manager().datasets.builders
    ground_config = provenance.config(GROUND_CONFIG)

    def evaluate(split: str, *changes: str) -> dict[str, Any]:
        tiny_changes = ["negations=false"] if tiny else []
        settings = load_settings(GroundSettings, ground_config, [*common, f"data.eval_split=[{split}]", *tiny_changes, *changes])
        return run_ground_evaluate(settings, builders, progress=False).metrics

    configured = load_settings(GroundSettings, ground_config, common)
    provenance.phantoms("phantom-cxr", *cxr_phantoms(configured.data), used_for="grounding: val chooses, test scores")
    candidates = dict(list(WINDOW_CANDIDATES.items())[:2] if tiny else WINDOW_CANDIDATES)
    if configured.zero_shot.window not in candidates.values():
        candidates["config"] = configured.zero_shot.window
    window = Selection(candidates, metric="pointing", mode="max", split=SELECTION_SPLIT, scored_split=SCORED_SPLIT)
    val_runs: dict[str, dict[str, Any]] = {}

    def val_pointing(sizes: list[float]) -> float | None:
        metrics = evaluate(SELECTION_SPLIT, "zero_shot.method=occlusion", f"zero_shot.window={sizes}", "boxes.miou_threshold=null")
        val_runs[str(sizes)] = metrics
        return metrics["overall"].get("pointing")

    chosen_window = window.choose(val_pointing)
    sweep = val_runs[str(chosen_window)]["overall"]
    threshold = Selection({f"{t:g}": t for t in configured.boxes.thresholds}, metric="miou", mode="max", split=SELECTION_SPLIT,
                          scored_split=SCORED_SPLIT)
    chosen_threshold = threshold.choose(lambda t: sweep.get(f"iou@{t:g}"))
    test = window.score(lambda sizes: evaluate(SCORED_SPLIT, "zero_shot.method=occlusion", f"zero_shot.window={sizes}",
                                               f"boxes.miou_threshold={chosen_threshold}"))
    threshold.scored = True  # scored in the same single test run
    similarity = evaluate(SCORED_SPLIT, "zero_shot.method=similarity", f"boxes.miou_threshold={chosen_threshold}")
    results: dict[str, Any] = {
        "encoder": encoder, "pretrain": pretrain, "overrides": list(overrides),
        "zero_shot_method": "occlusion", "zero_shot_cnr": test["overall"]["cnr"], "zero_shot_pointing": test["overall"]["pointing"],
        "zero_shot_negation_lower_rate": test.get("negation_lower_rate"),
        "zero_shot": {"occlusion": headline(test) | {"window": chosen_window}, "similarity": headline(similarity)},
    }
    print(f"zero-shot occlusion {chosen_window} (chosen on {SELECTION_SPLIT}): CNR {test['overall']['cnr']:.3f}, "
          f"pointing {test['overall']['pointing']:.3f} on {SCORED_SPLIT}", flush=True)

    if supervised:
        train_config = provenance.config(TRAIN_CONFIG)
        head_overrides = [*common, f"data.eval_split=[{SCORED_SPLIT}]", "save.name=grounding-bench-head", f"save.store={store}"]
        head_overrides += TINY_TRAIN if tiny else []
        started = time.perf_counter()
        outcome = run_ground_train(load_settings(GroundTrainSettings, train_config, head_overrides), builders, progress=False)
        metrics = outcome.metrics
        if outcome.stored:
            provenance.model("grounding_head", outcome.stored, store)
        results["supervised"] = headline(metrics) | {"wall_s": round(time.perf_counter() - started, 1), "steps": outcome.steps,
                                                     "stored": outcome.stored}
        results.update(supervised_box_acc50=metrics["overall"].get("box_acc@0.5"), supervised_miou=metrics["overall"].get("miou"))
    provenance.write(out_path, results, scored_split=SCORED_SPLIT,
                     selection=selection_record(**{"zero_shot.window": window, "boxes.miou_threshold": threshold}))
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=None, help="use this stored encoder (name[:version], with --store) instead of pretraining one")
    parser.add_argument("--store", type=Path, default=None, help="model store folder (default: a fresh one under runs/bench)")
    parser.add_argument("--no-supervised", action="store_true", help="skip the supervised head")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tiny", action="store_true", help="a few steps on 40 phantoms (a smoke test)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE passed to every grounding run")
    args = parser.parse_args(argv)
    run(args.out, args.tiny, models={"encoder": args.encoder} if args.encoder else {}, store=args.store, overrides=args.overrides,
        supervised=not args.no_supervised)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
