"""The ``counterfactual`` step of ``workbench demo``: classifier, CAE and a few explained phantom cases on one page.

Its sizes and budgets are in ``configs/demo.yaml`` under ``options.counterfactual``: ``data`` (the
data settings the three jobs share: ``image_size``, ``phantoms: {n, size}``) and the sections
``classify``, ``cae`` and ``explain`` (each that job's own settings); the step adds only what the
run decides (seed, device, folders, the store).
"""

from __future__ import annotations

from typing import Any

from workbench.config import merge_options
from workbench.report import RunFolder


def demo_counterfactual(context: Any) -> None:
    """Train a small classifier and CAE on chest phantoms, explain a few test cases, add them to the demo page."""
    from workbench_plugins.counterfactual.jobs.cae_train import run_cae_train
    from workbench_plugins.counterfactual.jobs.classify import run_classify_train
    from workbench_plugins.counterfactual.jobs.explain import run_explain
    from workbench_plugins.counterfactual.settings import CaeTrainSettings, ClassifyTrainSettings, ExplainSettings

    options = context.options("counterfactual")
    root = context.run.path / "counterfactual"
    store = str(root / "store")
    data = {"source": "phantoms", "root": str(context.run.path / "data" / "cxr-counterfactual"),
            "phantoms": {"seed": context.settings.run.seed}, "cache": "memory"}
    own = {"run": context.run_values(root), "data": merge_options(data, options.get("data") or {})}

    def job_settings(job: str, settings_class: type, extra: dict[str, Any]) -> Any:
        return context.step_settings("counterfactual", settings_class, merge_options(own, extra), section=options.get(job) or {})

    classify = job_settings("classify", ClassifyTrainSettings, {"save": {"store": store}})
    cae = job_settings("cae", CaeTrainSettings, {"save": {"store": store}})
    explain = job_settings("explain", ExplainSettings, {"classifier": classify.save.name, "cae": cae.save.name, "store": store})
    classified = run_classify_train(classify, context.host.datasets.builders, progress=False)
    trained = run_cae_train(cae, context.host.datasets.builders, progress=False)
    explained_run, summary = run_explain(explain, context.host.datasets.builders)
    context.results["counterfactual"] = {"classifier": classified.stored, "cae": trained.stored, "explain": summary}
    _add_section(context, explained_run, classified.metrics, trained.metrics, summary)


def _add_section(context: Any, explained_run: RunFolder, classifier_metrics: dict[str, Any], cae_metrics: dict[str, Any],
                 summary: dict[str, Any]) -> None:
    """Copy the explanation figures' section into the demo page (figures stay in the explain run folder)."""
    from workbench_plugins.counterfactual.pages.explain import method_rows

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
