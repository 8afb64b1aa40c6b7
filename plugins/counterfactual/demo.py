"""The ``counterfactual`` step of ``workbench demo``: classifier, CAE and a few explained phantom cases on one page.

The defaults are small so the demo (and its test) stays quick on a CPU; ``configs/demo.yaml`` can
pass larger ones under ``options.counterfactual`` (sections ``classify``, ``cae``, ``explain``,
each overriding that job's settings, plus ``phantoms``: ``{n, size, seed}`` and ``image_size``).
"""

from __future__ import annotations

from typing import Any

from workbench.config import load_settings
from workbench.report import RunFolder


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def demo_counterfactual(context: Any) -> None:
    """Train a small classifier and CAE on chest phantoms, explain a few test cases, add them to the demo page."""
    from workbench_plugins.counterfactual.cae_train import run_cae_train
    from workbench_plugins.counterfactual.classify import run_classify_train
    from workbench_plugins.counterfactual.explain_job import run_explain
    from workbench_plugins.counterfactual.settings import CaeTrainSettings, ClassifyTrainSettings, ExplainSettings

    options = context.options("counterfactual")
    root = context.run.path / "counterfactual"
    store = str(root / "store")
    data = {"source": "phantoms", "root": str(context.run.path / "data" / "cxr-counterfactual"),
            "phantoms": dict({"n": 60, "size": 128, "seed": context.settings.run.seed}, **options.get("phantoms", {})),
            "image_size": int(options.get("image_size", 32)), "cache": "memory"}
    run = {"seed": context.settings.run.seed, "device": str(context.device), "precision": context.settings.run.precision, "output_root": str(root)}
    classify = _merge({"run": run, "data": data, "model": {"network": "classifier-resnet18"},
                       "train": {"steps": 15, "batch_size": 16, "lr": 0.002, "checkpoint_every": 15, "log_every": 5},
                       "save": {"name": "demo-classifier", "store": store}, "examples": 0}, options.get("classify", {}))
    cae = _merge({"run": run, "data": data, "model": {"dim": 8, "n_res": 2, "mlp_dim": 64, "disc_dim": 8, "disc_layers": 3},
                  "train": {"steps": 8, "batch_size": 8, "checkpoint_every": 8, "log_every": 4},
                  "save": {"name": "demo-cae", "store": store}, "examples": 0}, options.get("cae", {}))
    explain = _merge({"run": run, "data": data, "classifier": "demo-classifier", "cae": "demo-cae", "store": store, "max_cases": 4,
                      "shown": 2, "evaluate": True, "baselines": ["gradcam"]}, options.get("explain", {}))
    classified = run_classify_train(load_settings(ClassifyTrainSettings, None, [], defaults=classify), context.host.datasets.builders,
                                    progress=False)
    trained = run_cae_train(load_settings(CaeTrainSettings, None, [], defaults=cae), context.host.datasets.builders, progress=False)
    explained_run, summary = run_explain(load_settings(ExplainSettings, None, [], defaults=explain), context.host.datasets.builders)
    context.results["counterfactual"] = {"classifier": classified.stored, "cae": trained.stored, "explain": summary}
    _add_section(context, explained_run, classified.metrics, trained.metrics, summary)


def _add_section(context: Any, explained_run: RunFolder, classifier_metrics: dict[str, Any], cae_metrics: dict[str, Any],
                 summary: dict[str, Any]) -> None:
    """Copy the explanation figures' section into the demo page (figures stay in the explain run folder)."""
    from workbench_plugins.counterfactual.explain_pages import method_rows

    page = context.report
    page.section("Counterfactual explanations (CAE)")
    page.text(f"Classifier {classifier_metrics.get('stored_model')}: held-out AUROC {classifier_metrics.get('auroc')}, accuracy "
              f"{classifier_metrics.get('accuracy')}. CAE {cae_metrics.get('stored_model')}: k-NN accuracy of the class codes "
              f"{cae_metrics.get('knn_accuracy')}. Flip rate {summary.get('flip_rate')} on {summary.get('flip_rate_cases')} correctly "
              f"classified images; {summary.get('seconds_per_explanation')} s per explanation. Short demo training: the numbers show "
              "the pipeline, not the method's quality.")
    page.table(method_rows(summary))
    figures = sorted(path for path in (explained_run.path / "cases").glob("*.png"))
    if figures:
        page.figures([(path, path.stem) for path in figures])
