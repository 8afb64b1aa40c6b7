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
    context.record("counterfactual", {key: context.results["counterfactual"][key]
                                      for key in ("flip_rate", "cases", "explained", "reconstruction_kept_rate")})
    _add_section(context, explained_run, classified.metrics, trained.metrics, summary, explain)


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


BASELINE_NAMES = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "occlusion": "occlusion"}


def _add_section(context: Any, explained_run: RunFolder, classifier_metrics: dict[str, Any], cae_metrics: dict[str, Any],
                 summary: dict[str, Any], explain: Any) -> None:
    """Say on the demo page what the explanations are and how often they were valid, then show the explained cases.

    The figures stay in the explain run folder; ``explain`` (the job's :class:`ExplainSettings`) says which path, split
    and baselines the text describes.
    """
    from workbench_plugins.counterfactual.pages.explain import method_rows

    page = context.report
    page.section("Counterfactual explanations (CAE)", lead="What the classifier would need to see to change its mind: each held-out image beside its counterfactual and where the two differ.")
    flip_rate = summary.get("flip_rate")
    said = "no correctly classified image to count" if flip_rate is None else f"{flip_rate:.2f}"
    goal = ("along a route through the codes of training images to the other class" if explain.path == "guided" else
            "in a straight line to the code of the other class's nearest training image" if explain.reference == "nearest" else
            "in a straight line to the other class's centroid code")
    split = "/".join(explain.data.eval_split)
    held_out = "held out from training" if not set(explain.data.eval_split) & set(explain.data.train_split) else "also used in training"
    panels = ", ".join(["original", "reconstruction", "counterfactual", "CAE saliency",
                        *(BASELINE_NAMES.get(name, name) for name in explain.baselines)])
    page.text(f"A classifier ({classifier_metrics.get('stored_model')}) learns {' vs '.join(summary.get('classes') or [])} on chest "
              f"phantoms; a class-association embedding (CAE, {cae_metrics.get('stored_model')}) learns to split each image into a "
              f"class code and an individual code. To explain an image, its class code moves in {explain.steps} steps {goal} while "
              "its individual code stays, until the classifier changes its decision: the image at that step is the counterfactual, "
              "and where it differs from the CAE's reconstruction is the CAE saliency. An explanation counts as valid only if the "
              "classifier flips and gives the reconstruction the image's own class.")
    page.text(f"On the {summary.get('explained')} {split} images ({held_out}): classifier AUROC {_number(classifier_metrics.get('auroc'))}, "
              f"accuracy {_number(classifier_metrics.get('accuracy'))}; k-NN accuracy of the CAE's class codes "
              f"{_number(cae_metrics.get('knn_accuracy'))}. Flip rate {said}: the share of the {summary.get('flip_rate_cases')} "
              f"correctly classified {split} images with a valid counterfactual; {_number(summary.get('seconds_per_explanation'), 3)} s "
              f"per explanation. The table scores each saliency map against the finding's mask on the {summary.get('localised_cases')} "
              f"of them that have the finding: its share of the map's energy, the pointing game (the map's peak on it) and the Dice "
              f"of the top {explain.topk_percent:g}% of the map. Below, the first {min(explain.shown, summary.get('explained') or 0)} "
              f"of them: {panels} (the maps over the original); under each, the path's steps with the classifier's p(target).")
    page.table(method_rows(summary))
    # each case's strip of images first, then its path
    figures = sorted((explained_run.path / "cases").glob("*.png"), key=lambda path: (path.stem.removesuffix("-path"), path.stem.endswith("-path")))
    if figures:
        page.figures([(path, _caption(path.stem, summary.get("cases") or [], panels)) for path in figures])


def _caption(stem: str, rows: list[dict[str, Any]], panels: str) -> str:
    """The caption of an explain figure ``NN-<id>[-path]``: the case's label, decision and what its counterfactual did."""
    index = int(stem.split("-", 1)[0]) if stem[:2].isdigit() else -1
    if not 0 <= index < len(rows):
        return stem
    row = rows[index]
    if stem.endswith("-path"):
        return f"{row['id']}: the path's steps towards {row['target']}, with the classifier's p({row['target']}) under each"
    outcome = (f"valid counterfactual: classified {row['target']} at step {row['flipped_step']} of {row['steps']}" if row.get("valid")
               else "INVALID: no valid counterfactual")
    return f"{row['id']} (label {row['label']}, classified {row['predicted']}, p={row['p']:.2f}); {outcome}. {panels[0].upper()}{panels[1:]}"


def _number(value: Any, digits: int = 2) -> str:
    """``value`` rounded to ``digits`` decimals, or ``n/a`` when it is not a number."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"
