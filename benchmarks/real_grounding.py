"""The supervised grounding head on real tuberculosis boxes (tbx11k), scored on the held-out test images.

Run: ``OMP_NUM_THREADS=1 python benchmarks/real_grounding.py [--tiny] [--out PATH]``
(default ``benchmarks/results/real_grounding.json``; needs ``benchmarks/real_pretrain.py`` run first for its
``contrastive-covid`` encoder, in ``runs/benchmarks/real_pretrain/store``).

For each phrase form of the tbx11k builder (``with-place``: "active tuberculosis in the right upper zone";
``without-place``: "active tuberculosis"), ``workbench ground train`` from ``configs/real_ground_tbx11k.yaml``
trains the head on the train images and scores it on ``val``, once per candidate encoder: the real-data one
from ``real_pretrain`` and the phantom one that ``real_pretrain`` trains from ``configs/pretrain_phantom.yaml``
(both from its store, so a clean checkout gets the same two).
The encoder with the best val box accuracy (mean over the two forms; ties: mIoU) is kept, and ``workbench ground
evaluate`` scores its heads once on ``test``: box accuracy at IoU >= 0.5, mIoU (heatmap >= 0.5 of its range
against the box) and the pointing game. Beside each, the baseline that reads no pixel: the mean training box of
the phrase's zone (with place) or of its class (without place), and the chosen encoder's zero-shot heatmaps
(occlusion and patch similarity at the workbench's default settings, nothing tuned), scored by the same code.

``--tiny`` uses a randomly initialised encoder stored for the run, a few steps and a handful of images.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.real_common import WORK_DIR, Clock, main_for, provenance, shared_data_root, single_thread, write_result  # noqa: E402
from workbench.config import load_settings  # noqa: E402
from workbench.host import create_plugin_manager  # noqa: E402
from workbench.model_store import open_store  # noqa: E402
from workbench_plugins.grounding.boxes import box_mask  # noqa: E402
from workbench_plugins.grounding.metrics import GroundingScores  # noqa: E402
from workbench_plugins.grounding.jobs.ground import load_grounding_records, run_ground_evaluate  # noqa: E402
from workbench_plugins.grounding.settings import GroundSettings, GroundTrainSettings  # noqa: E402
from workbench_plugins.grounding.jobs.train import run_ground_train  # noqa: E402

CONFIG = "configs/real_ground_tbx11k.yaml"
PHRASE_FORMS = ("with-place", "without-place")
PRETRAIN_STORE = WORK_DIR / "real_pretrain" / "store"
ENCODER_PRESET = "dual-vit-tiny-conv-minilm"
BENCHMARK = {
    "name": "real_grounding",
    "cpu_budget_minutes": 20,
    "configs": ["configs/real_ground_tbx11k.yaml"],
    "measures": "tbx11k test images: box accuracy at IoU>=0.5, mIoU, pointing game of the supervised grounding head, "
                "with and without the place in the phrase, beside the mean training box of the zone or class and the zero-shot heatmaps",
}
TINY_OVERRIDES = ["train.steps=3", "train.batch_size=4", "train.warmup_steps=1", "train.checkpoint_every=3",
                  "train.log_every=1", "data.max_train=6", "data.max_eval=4", "examples=0"]
HEADLINE = ("n", "box_acc@0.5", "miou", "pointing")
ZERO_SHOT_METHODS = ("occlusion", "similarity")  # the chosen encoder's own heatmaps, beside the head (defaults, nothing tuned)


def candidate_encoders(work: Path, tiny: bool) -> dict[str, str]:
    """``{label: encoder ref}`` to choose from on val, each copied into the run's own store (where its heads go).

    Full mode: the real-data and the phantom encoder that ``real_pretrain`` stored. Tiny mode: one randomly
    initialised encoder.
    """
    store = open_store(work / "store")
    if tiny:
        from workbench.registry import create_model
        from workbench_plugins.contrastive.models import dual_encoder_preprocessing

        options = {"image_size": 64, "context_length": 32}
        encoder = create_model(ENCODER_PRESET, pretrained_image=None, **options)
        store.save(encoder, name="encoder-random", factory=ENCODER_PRESET, task="contrastive",
                   config={**options, "pretrained_text": None}, preprocessing=dual_encoder_preprocessing(encoder), plugin="contrastive")
        return {"random (tiny mode)": "encoder-random:latest"}
    candidates: dict[str, str] = {}
    source = open_store(PRETRAIN_STORE)
    for label, name in (("covid-chestxray (real_pretrain)", "contrastive-covid"), ("phantom (configs/pretrain_phantom.yaml)", "contrastive-phantom")):
        if not source.list(name):
            raise RuntimeError(f"no {name} in {PRETRAIN_STORE}: run benchmarks/real_pretrain.py first (it stores both encoders)")
        weights, record = source.load_state_dict(name)
        copy = store.save(weights, name=f"encoder-{name}", factory=record.factory, task=record.task, config=record.config,
                          preprocessing=record.preprocessing, plugin=record.plugin, extra={"copied_from": record.ref})
        candidates[label] = f"{copy.name}:v{copy.version}"
    return candidates


def box_key(box: Mapping[str, Any], phrase_form: str) -> str:
    """What the baseline's mean box is taken over: the box's zone (with place) or its class (without)."""
    return str(box["place"]) if phrase_form == "with-place" else str(box["category"])


def mean_boxes(records: Iterable[Mapping[str, Any]], phrase_form: str) -> dict[str, np.ndarray]:
    """Mean normalised ``(x, y, w, h)`` of the training boxes per zone or class (``""``: over all boxes)."""
    grouped: dict[str, list[list[float]]] = defaultdict(list)
    for record in records:
        width, height = float(record["width"]), float(record["height"])
        for box in record["boxes"]:
            normalised = [box["x"] / width, box["y"] / height, box["w"] / width, box["h"] / height]
            grouped[box_key(box, phrase_form)].append(normalised)
            grouped[""].append(normalised)
    return {key: np.mean(values, axis=0) for key, values in grouped.items()}


def baseline_scores(train_records: list[dict], test_records: list[dict], phrase_form: str, miou_threshold: float) -> dict[str, Any]:
    """Score the mean training box of each test box's zone/class as if a grounder had predicted it.

    The heatmap is the box's mask plus a faint bump at its centre, so the pointing game points at the centre
    and the thresholded heatmap is the box itself.
    """
    means = mean_boxes(train_records, phrase_form)
    scores = GroundingScores((miou_threshold,))
    for record in test_records:
        width, height = int(record["width"]), int(record["height"])
        for box in record["boxes"]:
            x, y, w, h = means.get(box_key(box, phrase_form), means[""])
            guess = {"x": x * width, "y": y * height, "w": w * width, "h": h * height}
            rows, cols = np.mgrid[0:height, 0:width]
            centre_x, centre_y = guess["x"] + guess["w"] / 2, guess["y"] + guess["h"] / 2
            bump = np.exp(-(((cols - centre_x) / width) ** 2 + ((rows - centre_y) / height) ** 2))
            heatmap = box_mask(guess, height, width).astype(np.float64) + 1e-3 * bump
            scores(heatmap, box, category=box["category"], record_id=record["id"], phrase=box["phrase"], predicted_boxes=[guess])
    return headline(scores.aggregate(miou_threshold))


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``n``, box accuracy, mIoU and pointing, overall and per category."""
    def pick(summary: Mapping[str, Any]) -> dict[str, Any]:
        return {key: summary.get(key) for key in HEADLINE}

    return {"overall": pick(metrics["overall"]), "per_category": {name: pick(values) for name, values in metrics.get("per_category", {}).items()}}


def train_settings(work: Path, phrase_form: str, encoder: str, tiny: bool) -> GroundTrainSettings:
    """The committed config with this benchmark's data folder, phrase form, encoder, run folder and store."""
    overrides = [f"data.root={shared_data_root() / 'tbx11k-small'}", f"data.options.phrase_form={phrase_form}",
                 f"run.output_root={work / 'runs'}", "run.device=cpu", f"encoder.name={encoder}", f"encoder.store={work / 'store'}",
                 f"save.name=grounding-head-tbx11k-{phrase_form}", "data.train_split=[train]", "data.eval_split=[val]"]
    return load_settings(GroundTrainSettings, REPO_ROOT / CONFIG, overrides + (TINY_OVERRIDES if tiny else []))


def evaluate_head_on_test(settings: GroundTrainSettings, head: str, builders: Any) -> dict[str, Any]:
    """``workbench ground evaluate`` of a stored head on the test images (once)."""
    data = settings.data.model_dump(mode="json")
    data.update(eval_split=["test"])
    evaluation = GroundSettings.model_validate({
        "run": settings.run.model_dump(mode="json"), "data": data,
        "encoder": settings.encoder.model_dump(mode="json"), "boxes": settings.boxes.model_dump(mode="json"),
        "head": head, "examples": 0, "negations": False})
    return run_ground_evaluate(evaluation, builders, progress=False).metrics


def zero_shot_on_test(settings: GroundTrainSettings, method: str, builders: Any, tiny: bool) -> dict[str, Any]:
    """``workbench ground evaluate`` of the encoder alone (no head) on the test images, once: the zero-shot heatmap.

    Nothing is tuned: the zero-shot settings are the workbench's defaults (occlusion: windows of a quarter of the
    side, half overlap, dark fill), ``method`` picks ``occlusion`` or ``similarity``; mIoU uses the head's threshold.
    """
    data = settings.data.model_dump(mode="json")
    data.update(eval_split=["test"])
    evaluation = GroundSettings.model_validate({
        "run": settings.run.model_dump(mode="json"), "data": data, "encoder": settings.encoder.model_dump(mode="json"),
        "boxes": settings.boxes.model_dump(mode="json"), "zero_shot": {"method": method, **({"window": 0.5} if tiny else {})},
        "head": None, "examples": 0, "negations": False})
    return headline(run_ground_evaluate(evaluation, builders, progress=False).metrics)


def run(out_path: Path, tiny: bool = False, *, work_dir: Path | None = None, models: dict[str, str] | None = None,
        store: Path | None = None) -> dict[str, Any]:
    """Train heads per phrase form and encoder, pick the encoder on val, score test once; write and return the JSON."""
    if models:  # `workbench bench NAME --model ...`: the real-data benchmarks train what they score
        raise ValueError(f"{BENCHMARK['name']} trains its own models; it takes no --model")
    clock = Clock()
    work = Path(out_path).parent / f"{Path(out_path).stem}_work" if tiny else WORK_DIR / "real_grounding"
    builders = create_plugin_manager().datasets.builders
    with single_thread():
        encoders = candidate_encoders(work, tiny)
        val_runs: dict[str, dict[str, Any]] = defaultdict(dict)
        for label, encoder in encoders.items():
            for phrase_form in PHRASE_FORMS:
                settings = train_settings(work, phrase_form, encoder, tiny)
                outcome = run_ground_train(settings, builders, progress=False)
                val_runs[label][phrase_form] = {"head": outcome.stored, "val": headline(outcome.metrics)}

        def val_rank(label: str) -> tuple[float, float]:
            overall = [val_runs[label][form]["val"]["overall"] for form in PHRASE_FORMS]
            return (float(np.mean([row["box_acc@0.5"] for row in overall])), float(np.mean([row["miou"] for row in overall])))

        chosen = max(encoders, key=val_rank)
        test: dict[str, Any] = {}
        split_sizes: dict[str, int] = {}
        for phrase_form in PHRASE_FORMS:
            settings = train_settings(work, phrase_form, encoders[chosen], tiny)
            records = {split: load_grounding_records(settings.data, builders, work / "runs", [split], cap)
                       for split, cap in (("train", settings.data.max_train), ("val", settings.data.max_eval), ("test", settings.data.max_eval))}
            split_sizes = {split: len(rows) for split, rows in records.items()}
            head_metrics = evaluate_head_on_test(settings, val_runs[chosen][phrase_form]["head"], builders)
            test[phrase_form] = {"head": headline(head_metrics),
                                 "baseline_mean_training_box": baseline_scores(records["train"], records["test"], phrase_form,
                                                                               float(settings.boxes.miou_threshold or 0.5)),
                                 "baseline_keyed_by": "zone (side + upper/middle/lower)" if phrase_form == "with-place" else "class",
                                 **{f"zero_shot_{method}": zero_shot_on_test(settings, method, builders, tiny) for method in ZERO_SHOT_METHODS}}
    result = {
        "benchmark": "real_grounding", **provenance([CONFIG], tiny),
        "data": {"dataset": "tbx11k", "root": "../shared/data/tbx11k-small"},
        "split_sizes": split_sizes,
        "settings": {"steps": settings.train.steps, "batch_size": settings.train.batch_size,
                     "overrides_in_tiny_mode": TINY_OVERRIDES if tiny else [],
                     "selection": "encoder with the best val box accuracy at IoU>=0.5, mean over both phrase forms (ties: mIoU)"},
        "selection": {"candidates": dict(val_runs), "chosen_encoder": chosen},
        "test": test,
        **clock.seconds(),
    }
    result["summary"] = {"encoder": chosen, **{form: {"head": test[form]["head"]["overall"],
                                                      "baseline": test[form]["baseline_mean_training_box"]["overall"],
                                                      **{f"zero_shot_{method}": test[form][f"zero_shot_{method}"]["overall"]
                                                         for method in ZERO_SHOT_METHODS}} for form in PHRASE_FORMS}}
    write_result(Path(out_path), result)
    return result


main = main_for("real_grounding", run, __doc__.splitlines()[0])

if __name__ == "__main__":
    raise SystemExit(main())
