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
    context.results["counterfactual"] = demo_results(classified.stored, trained.stored, summary)
    _add_section(context, explained_run, classified.metrics, trained.metrics, summary)


def demo_results(classifier: str | None, cae: str | None, summary: dict[str, Any]) -> dict[str, Any]:
    """What the step leaves in ``context.results["counterfactual"]`` (the integrator writes ``flip_rate`` to the demo's metrics).

    Args:
        classifier, cae: the stored models' ``name:vN``.
        summary: ``run_explain``'s summary (with ``evaluate`` on).

    Returns:
        ``flip_rate`` (the share of the explained, correctly classified test images whose counterfactual flips the
        classifier while the reconstruction keeps the image's class: explanations with ``valid`` true), ``cases`` (how
        many images that share is over), ``explained`` (images explained), ``reconstruction_kept_rate``,
        ``classifier``, ``cae`` and the whole ``explain`` summary.
    """
    return {"flip_rate": summary.get("flip_rate"), "cases": summary.get("flip_rate_cases"), "explained": summary.get("explained"),
            "reconstruction_kept_rate": summary.get("reconstruction_kept_rate"), "classifier": classifier, "cae": cae, "explain": summary}


def _add_section(context: Any, explained_run: RunFolder, classifier_metrics: dict[str, Any], cae_metrics: dict[str, Any],
                 summary: dict[str, Any]) -> None:
    """Copy the explanation figures' section into the demo page (figures stay in the explain run folder)."""
    from workbench_plugins.counterfactual.pages.explain import method_rows

    page = context.report
    page.section("Counterfactual explanations (CAE)")
    flip_rate = summary.get("flip_rate")
    said = "no correctly classified image to count" if flip_rate is None else f"{flip_rate:.2f}"
    page.text(f"A classifier ({classifier_metrics.get('stored_model')}) learns {' vs '.join(summary.get('classes') or [])} on chest "
              f"phantoms; a class-association embedding (CAE, {cae_metrics.get('stored_model')}) learns to split each image into a "
              "class code and an individual code. To explain a held-out image, its class code walks towards the other class's "
              "centroid while its individual code stays, until the classifier changes its decision: the image at that step is the "
              "counterfactual, and where it differs from the CAE's reconstruction is the CAE saliency. An explanation counts as "
              "valid only if the classifier flips and gives the reconstruction the image's own class.")
    page.text(f"On {summary.get('explained')} test images (held-out, not used in training): classifier AUROC "
              f"{_number(classifier_metrics.get('auroc'))}, accuracy {_number(classifier_metrics.get('accuracy'))}; k-NN accuracy of "
              f"the CAE's class codes {_number(cae_metrics.get('knn_accuracy'))}. Flip rate {said}: the share of the "
              f"{summary.get('flip_rate_cases')} correctly classified test images with a valid counterfactual; "
              f"{_number(summary.get('seconds_per_explanation'), 3)} s per explanation. Below, cases of the test split: original, "
              "reconstruction, counterfactual, CAE saliency and Grad-CAM over the original; under it, the path's steps with "
              "the classifier's p(target).")
    page.table(method_rows(summary))
    # each case's strip of images first, then its path
    figures = sorted((explained_run.path / "cases").glob("*.png"), key=lambda path: (path.stem.removesuffix("-path"), path.stem.endswith("-path")))
    if figures:
        page.figures([(path, _caption(path.stem, summary.get("cases") or [])) for path in figures])


def _caption(stem: str, rows: list[dict[str, Any]]) -> str:
    """The caption of an explain figure ``NN-<id>[-path]``: the case's label, decision and what its counterfactual did."""
    index = int(stem.split("-", 1)[0]) if stem[:2].isdigit() else -1
    if not 0 <= index < len(rows):
        return stem
    row = rows[index]
    if stem.endswith("-path"):
        return f"{row['id']}: the path's steps towards {row['target']}, with the classifier's p({row['target']}) under each"
    outcome = (f"valid counterfactual: classified {row['target']} at step {row['flipped_step']} of {row['steps']}" if row.get("valid")
               else "INVALID: no valid counterfactual")
    return (f"{row['id']} (label {row['label']}, classified {row['predicted']}, p={row['p']:.2f}); {outcome}. "
            "Original, reconstruction, counterfactual, CAE saliency, Grad-CAM")


def _number(value: Any, digits: int = 2) -> str:
    """``value`` rounded to ``digits`` decimals, or ``n/a`` when it is not a number."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"
