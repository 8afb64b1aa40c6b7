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
   map (seeded uniform noise, the floor), following the predicted class, with each baseline's seconds per map, on a
   seeded draw of at most ``CURVE_CASES`` of the correctly classified test images (each costs about 400 classifier
   passes: occlusion's 225 windows and 17 points of two curves for five maps, 30-50 CPU-s here), each case's scores
   appended to ``curve_scores.jsonl`` in the work folder as it is done.

The configs are used as committed; nothing is chosen on test. The set has no lesion masks, so no localisation score.
CPU time (one thread), measured in the first full run: the classifier (ResNet-18 without the stem's max-pool, so its
Grad-CAM layer is 8x8) about 8 s a step at batch 32, 400 steps with its val scoring 61 minutes; the CAE about 1.6-2 s a
guided step (the classifier's forward and backward in each), 4000 steps about two hours; explaining the test children
and the curves about 42 minutes: about 225 minutes in all (300 stated as the budget), more than one working session of
a 2-core machine. The JSON's ``cpu_seconds`` count the last segment of a resumed run only. So the run can stop and go
on: ``workbench bench real_counterfactual --resume`` continues the newest classifier and CAE runs of the work folder
from their last checkpoints (a finished one is taken as it is), and the curves from the cases already scored.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.real_common import WORK_DIR, Clock, main_for, provenance, shared_data_root, single_thread, write_result  # noqa: E402
from benchmarks.real_saliency_curves import DELETION_FILL, INSERTION_START, deletion_insertion_auc  # noqa: E402
from workbench.config import load_settings, settings_to_yaml  # noqa: E402
from workbench.errors import ConfigError  # noqa: E402
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
    "cpu_budget_minutes": 300,
    "configs": ["configs/real_classify_pediatric.yaml", "configs/real_cae_pediatric.yaml"],
    "measures": "pediatric-cxr test children: CAE flip rate, flip step, L1 and SSIM, seconds per explanation; deletion/insertion "
                "AUC of the CAE map vs Grad-CAM, Grad-CAM++, occlusion and a random map",
}
TINY_TRAIN = ["train.steps=2", "train.batch_size=4", "train.warmup_steps=1", "train.checkpoint_every=2", "train.log_every=1",
              "data.max_train=12", "data.max_eval=6", "examples=0"]
TINY_CAE = TINY_TRAIN + ["optim.decay_steps=0"]
TINY_CASES = 3
CURVE_CASES = 64  # correctly classified test images the deletion/insertion curves are drawn on (seeded), see above
CURVE_SCORES_FILE = "curve_scores.jsonl"


def scored_cases(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The explain rows the scores are taken over: the correctly classified test images."""
    return [row for row in rows if row.get("correct")]


def mean_or_none(values: list[float]) -> float | None:
    """The mean rounded to 4 places, ``None`` for no values."""
    return round(float(np.mean(values)), 4) if values else None


def curve_rows(rows: list[dict[str, Any]], limit: int, seed: int) -> list[dict[str, Any]]:
    """A seeded draw of at most ``limit`` of ``rows``, kept in their order."""
    if len(rows) <= limit:
        return list(rows)
    drawn = sorted(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False).tolist())
    return [rows[index] for index in drawn]


def scored_so_far(path: Path) -> dict[str, dict[str, Any]]:
    """The cases ``path`` (JSON lines) already holds, by id; a line cut short by a stop is dropped (it is redone)."""
    done: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                case = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[case["id"]] = case
    return done


def case_random_map(seed: int, case_id: str, size: int) -> np.ndarray:
    """The random floor's map of one case ``(size, size)``: uniform noise seeded by the run seed and the case id
    (so a resumed run draws the same map)."""
    return np.random.default_rng([seed, zlib.crc32(case_id.encode("utf-8"))]).random((size, size))


def curve_scores(explain: ExplainSettings, run_path: Path, rows: list[dict[str, Any]], builders: Any, scores_file: Path) -> dict[str, Any]:
    """Mean deletion / insertion AUC per method over ``rows`` (their CAE maps are the run's ``saliency/*.npy``).

    The baselines' maps are made here, each timed (``seconds_per_map``): Grad-CAM, Grad-CAM++ and occlusion on the
    same classifier, for the class it predicted; the random map is seeded uniform noise (the floor). Each case's
    scores are appended to ``scores_file`` as it is done; cases it already holds are taken from it.
    """
    device = torch.device("cpu")
    classifier, record, _ = load_classifier(explain.classifier, explain.store, device)
    size, channels = explain.data.image_size, explain.data.channels
    classifier_size = record.preprocessing.image_size
    classifier_size = int(classifier_size if isinstance(classifier_size, int) else classifier_size[-1])
    baselines = baseline_maps(classifier, list(BASELINES), record.extra.get("gradcam_layer"), explain.occlusion_mask)
    cases, _ = batch_cases(explain, builders, channels, size, SkippedRecords(None))
    by_id = {case.id: case for case in cases}
    classes = list(record.extra.get("classes") or [])
    done = scored_so_far(scores_file)

    def probability_of(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(classifier(fit_to(images.to(device), record.preprocessing.channels, classifier_size)).float(), dim=1)

    scored: list[dict[str, Any]] = []
    for row in rows:
        if row["id"] in done:
            scored.append(done[row["id"]])
            continue
        case = by_id[row["id"]]
        predicted = classes.index(row["predicted"])
        maps = {"cae": np.load(run_path / row["saliency_file"])}
        classifier_input = fit_to(case.image[None], record.preprocessing.channels, classifier_size)
        seconds: dict[str, float] = {}
        for method, saliency_of in baselines.items():
            started = time.perf_counter()
            maps[method] = saliency_of(classifier_input, predicted)
            seconds[method] = time.perf_counter() - started
        maps["random"] = case_random_map(explain.run.seed, row["id"], size)
        aucs: dict[str, dict[str, float]] = {}
        for method, saliency in maps.items():
            saliency = np.asarray(saliency, dtype=np.float64)
            if saliency.shape != (size, size):
                saliency = torch.nn.functional.interpolate(torch.as_tensor(saliency)[None, None], size=(size, size), mode="bilinear")[0, 0].numpy()
            aucs[method] = deletion_insertion_auc(probability_of, case.image, saliency, predicted)
        line = {"id": row["id"], "auc": aucs, "seconds": seconds}
        with scores_file.open("a", encoding="utf-8") as handle:  # one line per case, flushed: a stop loses at most the case in hand
            handle.write(json.dumps(line) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        scored.append(line)
    scores: dict[str, Any] = {key: {method: mean_or_none([case["auc"][method][key] for case in scored]) for method in METHODS}
                              for key in ("deletion_auc", "insertion_auc")}
    differences = [case["auc"]["cae"]["deletion_auc"] - case["auc"]["gradcam"]["deletion_auc"] for case in scored]
    scores["deletion_auc_cae_minus_gradcam"] = {
        "mean": mean_or_none(differences),
        "standard_error": round(float(np.std(differences, ddof=1) / np.sqrt(len(differences))), 4) if len(differences) > 1 else None}
    scores["seconds_per_map"] = {method: mean_or_none([case["seconds"][method] for case in scored]) for method in BASELINES}
    scores["curve_cases"] = len(scored)
    return scores


def resumable_run(runs: Path, kind: str, settings: Any) -> Path | None:
    """The newest ``<kind>-*`` run folder under ``runs`` holding a checkpoint, to continue (``None``: there is none).

    Raises:
        ConfigError: that run was made with other settings (its ``config.yaml`` differs from ``settings``'s).
    """
    folders = sorted(folder for folder in runs.glob(f"{kind}-*") if any((folder / "checkpoints").glob("step-*")))
    if not folders:
        return None
    if (folders[-1] / "config.yaml").read_text(encoding="utf-8") != settings_to_yaml(settings):
        raise ConfigError(f"{folders[-1]}: made with other settings than this benchmark's (its config.yaml differs); "
                          "run the benchmark afresh, without --resume")
    return folders[-1]


def run(out_path: Path, tiny: bool = False, *, work_dir: Path | None = None, models: dict[str, str] | None = None,
        store: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Train the classifier and the CAE, explain the test children once, score them; write and return the JSON.

    ``resume``: continue the work folder's newest classifier and CAE runs from their last checkpoints and the curves
    from the cases already scored (see the module docstring), instead of starting afresh.
    """
    if models:  # `workbench bench NAME --model ...`: the real-data benchmarks train what they score
        raise ValueError(f"{BENCHMARK['name']} trains its own models; it takes no --model")
    clock = Clock()
    work = Path(out_path).parent / f"{Path(out_path).stem}_work" if tiny else WORK_DIR / "real_counterfactual"
    store = work / "store"
    common = [f"data.root={shared_data_root() / 'pediatric-cxr'}", f"run.output_root={work / 'runs'}", f"save.store={store}",
              "run.device=cpu", "data.train_split=[train]", "data.eval_split=[val]"]
    builders = create_plugin_manager().datasets.builders
    scores_file = work / CURVE_SCORES_FILE
    if not resume:
        scores_file.unlink(missing_ok=True)
    resumed: dict[str, str | None] = {}
    with single_thread():
        classify = load_settings(ClassifyTrainSettings, REPO_ROOT / CLASSIFY_CONFIG, common + (TINY_TRAIN if tiny else []))
        earlier = resumable_run(work / "runs", "classify", classify) if resume else None
        resumed["classifier"] = earlier.name if earlier else None
        classified = run_classify_train(classify, builders, resume=earlier, progress=False)
        cae_settings = load_settings(CaeTrainSettings, REPO_ROOT / CAE_CONFIG,
                                     common + [f"guide.classifier={classified.stored}", f"guide.store={store}"] + (TINY_CAE if tiny else []))
        earlier = resumable_run(work / "runs", "cae", cae_settings) if resume else None
        resumed["cae"] = earlier.name if earlier else None
        cae = run_cae_train(cae_settings, builders, resume=earlier, progress=False)
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
        curves = curve_scores(explain, explain_run.path, curve_rows(correct, CURVE_CASES, explain.run.seed), builders, scores_file)
    split_sizes = {split: len(pick_split(records, [split], None)) for split in ("train", "val", "test")}
    result = {
        "benchmark": "real_counterfactual", **provenance([CLASSIFY_CONFIG, CAE_CONFIG], tiny),
        "data": {"source": "folder", "root": "../shared/data/pediatric-cxr", "group_pattern": classify.data.group_pattern},
        "split_sizes": split_sizes,
        "settings": {"classifier_steps": classify.train.steps, "cae_steps": cae_settings.train.steps, "explain_path": explain.path,
                     "explain_steps": explain.steps, "cases_explained": len(summary["cases"]),
                     "overrides_in_tiny_mode": {"train": TINY_TRAIN, "cae": TINY_CAE, "cases": TINY_CASES} if tiny else {},
                     "deletion_fill": DELETION_FILL, "insertion_start": INSERTION_START,
                     "curve_cases": f"a seeded draw of at most {CURVE_CASES} of the correctly classified test images",
                     "resumed_runs": resumed,
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
