"""Counterfactual explanations (CAE) against Grad-CAM, Grad-CAM++ and occlusion on the chest phantoms, side by side.

Run: ``workbench bench counterfactual_phantom [--tiny] [--model classifier=NAME --model cae=NAME --store DIR]``
(or ``.venv/bin/python benchmarks/counterfactual_phantom.py [--classifier NAME] [--cae NAME] [--store DIR] [--tiny]``).

On the chest phantoms (the configs' task: pleural effusion vs no finding, other findings left out; exact lesion
masks) the script

1. trains the classifier (``configs/classify_phantom.yaml``, train split only) unless the user names a stored one;
2. trains the CAE (``configs/cae_phantom.yaml``, train split only) in one go unless the user names a stored one; the
   config's classifier guidance (``loss.classifier_guidance``, not in the papers) is given the classifier of step 1 as
   its guide; the run also stores its checkpoints at ``train.store_steps`` as versions of their own;
3. chooses the CAE's checkpoint on the val split, by a rule fixed beforehand: the highest CAE flip rate (validity
   rule on) over the correctly classified val images, the final model winning a tie (a user-named CAE is taken as
   it is);
4. explains every held-out test image once, in one ``workbench explain --evaluate`` run, with the chosen CAE's
   linear class-code path and the three baselines on the same classifier and images;
5. scores the **correctly classified** test images: flip rate (the CAE's path reached the other
   class), seconds per explanation, and, on those carrying a lesion, energy-in-mask and the
   pointing game of every method.

``--set-classify key=value`` / ``--set-cae key=value`` / ``--set-explain key=value`` override the
configs (repeatable), e.g. ``--set-cae train.steps=300`` for a short check or ``--set-explain occlusion_mask=16``
for finer (about 4x slower) occlusion maps.

Results go to ``benchmarks/results/counterfactual_phantom.json``: ``flip_rate``,
``seconds_per_explanation``, ``energy_in_mask`` and ``pointing``, each a mapping from method
(``cae``, ``gradcam``, ``gradcampp``, ``occlusion``; the flip rate exists for ``cae`` only) to its
value, plus the settings and the training metrics; a Markdown table is printed.

Grad-CAM and Grad-CAM++ maps are min-max scaled to [0, 1] with the high end on the most class-relevant region
(MONAI's default normaliser flips them, which is what gave Grad-CAM a pointing score of 0 before).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from workbench.config import load_settings  # noqa: E402
from workbench.host import create_plugin_manager  # noqa: E402
from workbench.model_records import parse_ref  # noqa: E402
from workbench.model_store import ModelStore  # noqa: E402
from workbench.provenance import Provenance  # noqa: E402
from workbench.selection import Selection, selection_record  # noqa: E402
from workbench_plugins.counterfactual.jobs.cae_train import run_cae_train  # noqa: E402
from workbench_plugins.counterfactual.jobs.classify import run_classify_train  # noqa: E402
from workbench_plugins.counterfactual.jobs.explain import run_explain  # noqa: E402
from workbench_plugins.counterfactual.settings import CaeTrainSettings, ClassifyTrainSettings, ExplainSettings  # noqa: E402

METHODS = ("cae", "gradcam", "gradcampp", "occlusion")
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "counterfactual_phantom.json"
DEFAULT_ROOT = REPO_ROOT / "runs" / "bench-counterfactual"
CLASSIFY_CONFIG, CAE_CONFIG = "configs/classify_phantom.yaml", "configs/cae_phantom.yaml"
# CPU budget, from a run on a busy 2-core CPU (one thread): the classifier's 150 steps and its evaluation about 12 CPU
# minutes; the CAE about 2.2 CPU seconds a step with its guide classifier (4000 steps: about 150 CPU minutes); the
# val choice (three CAE versions, the CAE path alone) and the test run with the three baselines about 15 more.
BENCHMARK = {"name": "counterfactual_phantom", "models": ["classifier", "cae"], "cpu_budget_minutes": 180, "configs": ["configs/classify_phantom.yaml", "configs/cae_phantom.yaml"],
             "measures": "CAE counterfactuals vs Grad-CAM, Grad-CAM++ and occlusion on the test phantoms: flip rate, energy-in-mask, "
                         "pointing, seconds per explanation"}
# Tiny: a small CAE, a few steps of each job, two explained images.
TINY_DATA = ["data.phantoms={n: 60, size: 128, seed: 0}", "data.image_size=64"]
TINY_CLASSIFY = ["train.steps=2", "train.batch_size=8", "train.warmup_steps=1", "train.checkpoint_every=2", "train.log_every=1", "examples=0"]
TINY_CAE = ["model.dim=4", "model.mlp_dim=32", "model.disc_dim=8", "model.disc_layers=3", "train.steps=4", "train.batch_size=4",
            "train.checkpoint_every=2", "train.store_steps=[2]", "train.log_every=1", "optim.decay_steps=0", "examples=0"]


def mean_over(rows: list[dict[str, Any]], key: str) -> float | None:
    """The mean of ``row[key]`` over the rows that hold a number there (``None`` when none do)."""
    values = [float(row[key]) for row in rows if isinstance(row.get(key), (int, float))]
    return round(float(np.mean(values)), 4) if values else None


def score_correct(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The benchmark's numbers from ``run_explain``'s case rows, over the correctly classified images only.

    Returns:
        ``flip_rate`` ``{"cae": share of valid explanations}``, ``seconds_per_explanation``,
        ``energy_in_mask``, ``pointing`` and ``dice_topk`` (each method -> mean), the CAE's localisation
        over valid explanations alone (``cae_valid_only``), the share of reconstructions the classifier gives the
        image's own class (``reconstruction_kept_rate``: a valid explanation needs it), and the case counts.
    """
    correct = [row for row in rows if row.get("correct")]
    localised = [row for row in correct if "pointing.cae" in row]
    valid_localised = [row for row in localised if row["valid"]]
    return {
        "flip_rate": {"cae": round(float(np.mean([row["valid"] for row in correct])), 4) if correct else None},
        "seconds_per_explanation": {method: mean_over(correct, f"seconds.{method}") for method in METHODS},
        "energy_in_mask": {method: mean_over(localised, f"energy_in_mask.{method}") for method in METHODS},
        "pointing": {method: mean_over(localised, f"pointing.{method}") for method in METHODS},
        "dice_topk": {method: mean_over(localised, f"dice_topk.{method}") for method in METHODS},
        "cae_valid_only": {"energy_in_mask": mean_over(valid_localised, "energy_in_mask.cae"),
                           "pointing": mean_over(valid_localised, "pointing.cae"), "cases": len(valid_localised)},
        "flipped_step_mean": mean_over([row for row in correct if row["valid"]], "flipped_step"),
        "reconstruction_kept_rate": mean_over(correct, "reconstruction_kept_class"),
        "queries_per_explanation": mean_over(correct, "queries"),
        "cases": {"explained": len(rows), "correct": len(correct), "correct_with_lesion": len(localised),
                  "correct_by_class": {name: sum(1 for row in correct if row["label"] == name) for name in sorted({row["label"] for row in rows})}},
    }


def markdown_table(scores: dict[str, Any]) -> str:
    """One row per method: flip rate, seconds per explanation, energy-in-mask, pointing game, top-k Dice."""
    lines = ["| method | flip rate | s / explanation | energy-in-mask | pointing | top-5% Dice |", "|---|---|---|---|---|---|"]
    for method in METHODS:
        cells = [scores["flip_rate"].get(method, "-"), scores["seconds_per_explanation"][method], scores["energy_in_mask"][method],
                 scores["pointing"][method], scores["dice_topk"][method]]
        lines.append(f"| {method} | " + " | ".join("-" if cell is None else str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def run(out_path: Path, tiny: bool = False, *, work_dir: Path = DEFAULT_ROOT, models: dict[str, str] | None = None,
        store: Path | None = None, set_classify: list[str] = (), set_cae: list[str] = (), set_explain: list[str] = (),
        max_cases: int = 200) -> dict[str, Any]:
    """Train the classifier and the CAE from the configs (unless ``models`` names them), explain the test phantoms, write the JSON.

    Args:
        out_path: the results JSON.
        tiny: a few steps on 60 phantoms, two explained images (a smoke test).
        work_dir: run folders go under ``work_dir/runs``.
        models: ``classifier`` and/or ``cae`` stored references to use instead of training.
        store: the model store (what is trained goes there too).
        set_classify / set_cae / set_explain: ``key=value`` overrides (recorded in the JSON).
        max_cases: test images explained (all of them by default).
    """
    models, store = dict(models or {}), Path(store or work_dir / "store")
    provenance = Provenance("counterfactual_phantom", tiny=tiny)
    common = [f"run.output_root={work_dir / 'runs'}", f"save.store={store}"]
    data_root = work_dir / "data" / "phantom-cxr-128-tiny" if tiny else None
    if tiny:
        common += ["run.device=cpu", f"data.root={data_root}", *TINY_DATA]
        max_cases = 2
    builders = create_plugin_manager().datasets.builders
    timings: dict[str, float] = {}
    trained: dict[str, Any] = {}

    classify_settings = load_settings(ClassifyTrainSettings, provenance.config(CLASSIFY_CONFIG),
                                      [*common, *(TINY_CLASSIFY if tiny else []), *set_classify])
    phantoms = classify_settings.data.phantoms
    provenance.phantoms("phantom-cxr", phantoms["n"], phantoms["seed"], phantoms["size"], used_for=f"{classify_settings.data.finding} vs none")
    classifier = models.get("classifier")
    if classifier is None:
        started = time.perf_counter()
        outcome = run_classify_train(classify_settings, builders, progress=False)
        timings["classifier_train_s"] = round(time.perf_counter() - started, 1)
        classifier, trained["classifier"] = outcome.stored, outcome.metrics
    if classifier is None:
        raise SystemExit(f"save.name is null in {CLASSIFY_CONFIG}: nothing was stored to explain")
    provenance.model("classifier", classifier, store, trained_here="classifier" not in models)
    # The CAE's classifier guidance (when its weight is > 0) uses the classifier this benchmark explains.
    guide = [f"guide.classifier={classifier}", f"guide.store={store}"]
    cae_settings = load_settings(CaeTrainSettings, provenance.config(CAE_CONFIG), [*common, *guide, *(TINY_CAE if tiny else []), *set_cae])
    cae = models.get("cae")
    if cae is None:
        started = time.perf_counter()
        cae_outcome = run_cae_train(cae_settings, builders, progress=False)
        timings["cae_train_s"] = round(time.perf_counter() - started, 1)
        cae, trained["cae"] = cae_outcome.stored, {key: value for key, value in cae_outcome.metrics.items() if key != "centroids"}
    if cae is None:
        raise SystemExit(f"save.name is null in {CAE_CONFIG}: nothing was stored to explain")

    # The CAE's checkpoint is chosen on val (test unseen): the final model and the train.store_steps versions, by
    # the val flip rate (validity rule on; correctly classified val images), the final model winning a tie.
    candidates = {"final": cae}
    if "cae" not in models:
        stored_steps = cae_outcome.metrics.get("stored_steps", {})
        candidates.update({f"step {step}": stored_steps[step] for step in sorted(stored_steps, key=int, reverse=True)})
    selection = Selection(candidates, metric="flip_rate", mode="max", split="val", scored_split="test",
                          rule="max CAE flip rate (validity rule on) over the correctly classified val images; the final model wins a tie")

    def explain(reference: str, split: str, baselines: list[str], shown: int) -> tuple[Any, dict[str, Any]]:
        data = dict(cae_settings.data.model_dump(mode="json"), eval_split=[split])
        overrides = {"run": {**cae_settings.run.model_dump(mode="json"), "name": None}, "data": data, "classifier": classifier, "cae": reference,
                     "store": str(store), "max_cases": max_cases, "baselines": baselines, "evaluate": True, "shown": shown,
                     "steps": 3 if tiny else 10,
                     # 32-pixel patches (stride 16): 64 occluded copies per 128x128 image, about 5 s on one core; 16-pixel
                     # patches take 225 copies and about 19 s per image, most of the benchmark's time.
                     "occlusion_mask": 16 if tiny else 32}
        settings = load_settings(ExplainSettings, None, list(set_explain), defaults=overrides)
        return settings, run_explain(settings, builders)

    started = time.perf_counter()
    val_runs: dict[str, str] = {}

    def val_flip_rate(reference: str) -> float | None:
        _, (folder, summary) = explain(reference, "val", [], 0)
        val_runs[reference] = folder.path.name
        return score_correct(summary["cases"])["flip_rate"]["cae"]

    cae = selection.choose(val_flip_rate)
    provenance.model("cae", cae, store, trained_here="cae" not in models)  # the version chosen on val
    timings["choose_on_val_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    explain_settings, (run_folder, summary) = selection.score(lambda reference: explain(reference, "test", list(METHODS[1:]), 2 if tiny else 8))
    timings["explain_s"] = round(time.perf_counter() - started, 1)

    scores = score_correct(summary["cases"])
    stored = ModelStore(store)
    records = {key: stored.resolve(*parse_ref(reference)) for key, reference in (("classifier", classifier), ("cae", cae))}
    results = {
        **scores,
        "knn_accuracy": summary.get("knn_accuracy"),
        "proximity": {key: summary.get(key) for key in ("proximity_l1", "proximity_ssim", "sparsity")},
        "settings": {
            "classifier": classifier, "cae": cae, "image_size": explain_settings.data.image_size, "path": explain_settings.path,
            "steps": explain_settings.steps, "occlusion_mask": explain_settings.occlusion_mask, "phantoms": explain_settings.data.phantoms,
            "finding": explain_settings.data.finding, "eval_split": explain_settings.data.eval_split,
            "classify_overrides": list(set_classify), "cae_overrides": list(set_cae), "explain_overrides": list(set_explain),
            "stored": {key: {"ref": record.ref, "factory": record.factory, "config": record.config, "metrics": record.metrics,
                             "guide_classifier": record.extra.get("guide_classifier"), "run": record.extra.get("run")}
                       for key, record in records.items()},
        },
        "trained": trained,
        "timings": timings,
        "explain_run": run_folder.path.name,
    }
    results["val_explain_runs"] = val_runs
    provenance.write(out_path, results, scored_split="test", selection=selection_record(cae_checkpoint=selection))
    print(markdown_table(scores))
    print(f"\n{scores['cases']['correct']} of {scores['cases']['explained']} test images correctly classified "
          f"({scores['cases']['correct_with_lesion']} with a lesion mask); k-NN accuracy of the class codes {results['knn_accuracy']}; "
          f"classifier {classifier}, CAE {cae}; explain run {run_folder.path}")
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", default=None, help="a stored classifier name[:version] to reuse (default: train one)")
    parser.add_argument("--cae", default=None, help="a stored CAE name[:version] to reuse (default: train one)")
    parser.add_argument("--store", type=Path, default=None, help="registry folder (default: <output-root>/store)")
    parser.add_argument("--output-root", type=Path, default=DEFAULT_ROOT, help="run folders go here")
    parser.add_argument("--set-classify", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--set-cae", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--set-explain", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--max-cases", type=int, default=200, help="test images explained (all of them by default)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--tiny", action="store_true", help="a few steps on 60 phantoms (a smoke test)")
    arguments = parser.parse_args(argv)
    models = {key: value for key, value in (("classifier", arguments.classifier), ("cae", arguments.cae)) if value}
    return run(arguments.output, arguments.tiny, work_dir=arguments.output_root, models=models, store=arguments.store,
               set_classify=arguments.set_classify, set_cae=arguments.set_cae, set_explain=arguments.set_explain, max_cases=arguments.max_cases)


if __name__ == "__main__":
    main()
