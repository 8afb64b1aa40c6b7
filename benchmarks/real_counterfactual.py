"""Counterfactual explanations (CAE) of a pneumonia classifier on real paediatric chest radiographs, scored on test.

Run: ``OMP_NUM_THREADS=1 python benchmarks/real_counterfactual.py [--tiny] [--out PATH]``
(default ``benchmarks/results/real_counterfactual.json``; the data from ``$WORKBENCH_SHARED_DATA`` or ``../shared/data``).

1. ``workbench classify train`` from ``configs/real_classify_pediatric.yaml`` (scored on ``val``);
2. ``workbench cae train`` from ``configs/real_cae_pediatric.yaml``, guided by that classifier (scored on ``val``);
3. ``workbench explain --evaluate`` on the ``test`` children, once: the CAE's linear class-code path (Grad-CAM
   beside it on the page); flip rate (over correctly classified images, with the reconstruction-validity rule), mean
   flip step, proximity of the counterfactual to the image (L1, SSIM), seconds per explanation; the page draws
   images of both classes, each with its counterfactual and the change;
4. deletion and insertion AUC (``real_saliency_curves``) of the CAE map, Grad-CAM, Grad-CAM++, occlusion and a random
   map (seeded uniform noise, the floor) on the correctly classified test images, following the predicted class,
   with each baseline's seconds per map.

The configs are used as committed; nothing is chosen on test. The set has no lesion masks, so no localisation score.
The full run trains 400 classifier and 4000 CAE steps. CPU budget (one thread): the CAE's guided steps cost about
1-1.4 CPU-s each at 128x128 and batch 4 (a profile of one step: convolutions' forward and backward are 80% of it), so
70-95 minutes; the classifier a few minutes; explaining and scoring the about 200 test children (occlusion's 256
classifier passes per image the largest part) about 15: 150 minutes stated, not yet measured in one run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.real_common import WORK_DIR, Clock, main_for, provenance, shared_data_root, single_thread, write_result  # noqa: E402
from benchmarks.real_saliency_curves import DELETION_FILL, INSERTION_START, deletion_insertion_auc  # noqa: E402
from workbench.config import load_settings  # noqa: E402
from workbench.data.skipped import SkippedRecords  # noqa: E402
from workbench.host import create_plugin_manager  # noqa: E402
from workbench_plugins.counterfactual.baselines import baseline_maps  # noqa: E402
from workbench_plugins.counterfactual.jobs.cae_train import run_cae_train  # noqa: E402
from workbench_plugins.counterfactual.jobs.classify import run_classify_train  # noqa: E402
from workbench_plugins.counterfactual.jobs.classify_evaluate import load_classifier  # noqa: E402
from workbench_plugins.counterfactual.data import labelled_records, pick_split  # noqa: E402
from workbench_plugins.counterfactual.explain import fit_to  # noqa: E402
from workbench_plugins.counterfactual.jobs.explain import batch_cases, run_explain  # noqa: E402
from workbench_plugins.counterfactual.settings import CaeTrainSettings, ClassifyTrainSettings, ExplainSettings  # noqa: E402

CLASSIFY_CONFIG = "configs/real_classify_pediatric.yaml"
CAE_CONFIG = "configs/real_cae_pediatric.yaml"
BASELINES = ("gradcam", "gradcampp", "occlusion")
METHODS = ("cae", *BASELINES, "random")
BENCHMARK = {
    "name": "real_counterfactual",
    "cpu_budget_minutes": 150,
    "configs": ["configs/real_classify_pediatric.yaml", "configs/real_cae_pediatric.yaml"],
    "measures": "pediatric-cxr test children: CAE flip rate, flip step, L1 and SSIM, seconds per explanation; deletion/insertion "
                "AUC of the CAE map vs Grad-CAM, Grad-CAM++, occlusion and a random map",
}
TINY_TRAIN = ["train.steps=2", "train.batch_size=4", "train.warmup_steps=1", "train.checkpoint_every=2", "train.log_every=1",
              "data.max_train=12", "data.max_eval=6", "examples=0"]
TINY_CAE = TINY_TRAIN + ["optim.decay_steps=0"]
TINY_CASES = 3


def scored_cases(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The explain rows the scores are taken over: the correctly classified test images."""
    return [row for row in rows if row.get("correct")]


def mean_or_none(values: list[float]) -> float | None:
    """The mean rounded to 4 places, ``None`` for no values."""
    return round(float(np.mean(values)), 4) if values else None


def curve_scores(explain: ExplainSettings, run_path: Path, rows: list[dict[str, Any]], builders: Any) -> dict[str, Any]:
    """Mean deletion / insertion AUC per method over ``rows`` (their CAE maps are the run's ``saliency/*.npy``).

    The baselines' maps are made here, each timed (``seconds_per_map``): Grad-CAM, Grad-CAM++ and occlusion on the
    same classifier, for the class it predicted; the random map is seeded uniform noise (the floor).
    """
    device = torch.device("cpu")
    classifier, record, _ = load_classifier(explain.classifier, explain.store, device)
    size, channels = explain.data.image_size, explain.data.channels
    classifier_size = record.preprocessing.image_size
    classifier_size = int(classifier_size if isinstance(classifier_size, int) else classifier_size[-1])
    baselines = baseline_maps(classifier, list(BASELINES), record.extra.get("gradcam_layer"), explain.occlusion_mask)
    cases, _ = batch_cases(explain, builders, channels, size, SkippedRecords(None))
    by_id = {case.id: case for case in cases}
    random = np.random.default_rng(explain.run.seed)
    classes = list(record.extra.get("classes") or [])

    def probability_of(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(classifier(fit_to(images.to(device), record.preprocessing.channels, classifier_size)).float(), dim=1)

    per_method: dict[str, dict[str, list[float]]] = {method: {"deletion_auc": [], "insertion_auc": []} for method in METHODS}
    seconds: dict[str, list[float]] = {method: [] for method in BASELINES}
    for row in rows:
        case = by_id[row["id"]]
        predicted = classes.index(row["predicted"])
        maps = {"cae": np.load(run_path / row["saliency_file"])}
        classifier_input = fit_to(case.image[None], record.preprocessing.channels, classifier_size)
        for method, saliency_of in baselines.items():
            started = time.perf_counter()
            maps[method] = saliency_of(classifier_input, predicted)
            seconds[method].append(time.perf_counter() - started)
        maps["random"] = random.random((size, size))
        for method, saliency in maps.items():
            saliency = np.asarray(saliency, dtype=np.float64)
            if saliency.shape != (size, size):
                saliency = torch.nn.functional.interpolate(torch.as_tensor(saliency)[None, None], size=(size, size), mode="bilinear")[0, 0].numpy()
            for key, value in deletion_insertion_auc(probability_of, case.image, saliency, predicted).items():
                per_method[method][key].append(value)
    scores: dict[str, Any] = {key: {method: mean_or_none(per_method[method][key]) for method in METHODS} for key in ("deletion_auc", "insertion_auc")}
    scores["seconds_per_map"] = {method: mean_or_none(values) for method, values in seconds.items()}
    return scores


def run(out_path: Path, tiny: bool = False, *, work_dir: Path | None = None, models: dict[str, str] | None = None,
        store: Path | None = None) -> dict[str, Any]:
    """Train the classifier and the CAE, explain the test children once, score them; write and return the JSON."""
    if models:  # `workbench bench NAME --model ...`: the real-data benchmarks train what they score
        raise ValueError(f"{BENCHMARK['name']} trains its own models; it takes no --model")
    clock = Clock()
    work = Path(out_path).parent / f"{Path(out_path).stem}_work" if tiny else WORK_DIR / "real_counterfactual"
    store = work / "store"
    common = [f"data.root={shared_data_root() / 'pediatric-cxr'}", f"run.output_root={work / 'runs'}", f"save.store={store}",
              "run.device=cpu", "data.train_split=[train]", "data.eval_split=[val]"]
    builders = create_plugin_manager().datasets.builders
    with single_thread():
        classify = load_settings(ClassifyTrainSettings, REPO_ROOT / CLASSIFY_CONFIG, common + (TINY_TRAIN if tiny else []))
        classified = run_classify_train(classify, builders, progress=False)
        cae_settings = load_settings(CaeTrainSettings, REPO_ROOT / CAE_CONFIG,
                                     common + [f"guide.classifier={classified.stored}", f"guide.store={store}"] + (TINY_CAE if tiny else []))
        cae = run_cae_train(cae_settings, builders, progress=False)
        data = cae_settings.data.model_dump(mode="json")
        data.update(eval_split=["test"], max_eval=None)
        records, _ = labelled_records(cae_settings.data, builders, work / "runs")
        test_count = len(pick_split(records, ["test"], None))
        explain = ExplainSettings.model_validate({
            "run": {**cae_settings.run.model_dump(mode="json"), "name": None}, "data": data, "classifier": classified.stored,
            "cae": cae.stored, "store": str(store), "max_cases": TINY_CASES if tiny else test_count, "baselines": ["gradcam"],
            "evaluate": True, "shown": 0 if tiny else 8})
        explain_run, summary = run_explain(explain, builders)
        correct = scored_cases(summary["cases"])
        curves = curve_scores(explain, explain_run.path, correct, builders)
    split_sizes = {split: len(pick_split(records, [split], None)) for split in ("train", "val", "test")}
    result = {
        "benchmark": "real_counterfactual", **provenance([CLASSIFY_CONFIG, CAE_CONFIG], tiny),
        "data": {"source": "folder", "root": "../shared/data/pediatric-cxr", "group_pattern": classify.data.group_pattern},
        "split_sizes": split_sizes,
        "settings": {"classifier_steps": classify.train.steps, "cae_steps": cae_settings.train.steps, "explain_path": explain.path,
                     "explain_steps": explain.steps, "cases_explained": len(summary["cases"]),
                     "overrides_in_tiny_mode": {"train": TINY_TRAIN, "cae": TINY_CAE, "cases": TINY_CASES} if tiny else {},
                     "deletion_fill": DELETION_FILL, "insertion_start": INSERTION_START,
                     "selection": "none: the committed configs; the training jobs report on val"},
        "val": {"classifier": {key: classified.metrics.get(key) for key in ("accuracy", "auroc", "balanced_accuracy") if key in classified.metrics},
                "cae": {key: value for key, value in cae.metrics.items() if key != "centroids"}},
        "test": {"cases": len(summary["cases"]), "correctly_classified": len(correct),
                 "flip_rate": mean_or_none([float(row["valid"]) for row in correct]),
                 "mean_flip_step": mean_or_none([float(row["flipped_step"]) for row in correct if row["valid"]]),
                 "path_steps": explain.steps,
                 "ssim": mean_or_none([row["ssim"] for row in correct]),
                 "l1": mean_or_none([row["l1"] for row in correct]),
                 "seconds_per_explanation": {"cae": mean_or_none([row["seconds.cae"] for row in correct]),
                                             **curves.pop("seconds_per_map")},
                 **curves},
        "page": "the explain run's index.html (run folder in `runs`): images of both classes, each with its reconstruction, "
                "counterfactual, the change and the saliency overlays",
        **clock.seconds(),
    }
    result["summary"] = result["test"]
    write_result(Path(out_path), result)
    return result


main = main_for("real_counterfactual", run, __doc__.splitlines()[0])

if __name__ == "__main__":
    raise SystemExit(main())
