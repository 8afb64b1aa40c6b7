"""``workbench ground train``: the supervised head on a frozen stored encoder.

The encoder is frozen, so its patch tokens and phrase embeddings are computed
once per image and phrase (``head_features``) and the head trains on those in
the shared :class:`~workbench.train.Trainer` (resume, progress, checkpoints,
TensorBoard). Then the head is evaluated on the held-out split, stored with
task ``grounding`` (its record names the encoder) and the run's
``metrics.json`` and ``index.html`` are written. No augmentation: with frozen,
cached features an augmented image would need a new encoder pass per step.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

import torch
from torch.utils.data import Dataset

from workbench.checkpoints import seed_everything
from workbench.data.loaders import build_loader
from workbench.data.skipped import SkippedRecords
from workbench.distributed import init_distributed
from workbench.jobs import TrainOutcome, open_run_folder
from workbench.report import HtmlReport, RunFolder
from workbench.train import Trainer
from workbench_plugins.grounding.boxes import box_mask, boxes_to_cxcywh
from workbench_plugins.grounding.data import GroundingSample, iter_samples
from workbench_plugins.grounding.encoder import GroundingEncoder, open_store
from workbench_plugins.grounding.evaluate import evaluate_grounder, worst_kept
from workbench_plugins.grounding.grounders import HEAD_TASK, HeadGrounder
from workbench_plugins.grounding.losses import GroundingLoss, patch_coverage
from workbench_plugins.grounding.models import PhraseGroundingHead
from workbench_plugins.grounding.pages import write_evaluation_section
from workbench_plugins.grounding.run import load_grounding_records
from workbench_plugins.grounding.settings import GroundTrainSettings

logger = logging.getLogger("workbench.grounding")
HEAD_FACTORY = "grounding-head"


class HeadFeatures(Dataset):
    """Frozen features of every (image, phrase) pair, one item per phrase box.

    Items are dicts: ``tokens`` ``(N, Dv)``, ``phrase`` ``(D,)``, ``box`` ``(4,)`` normalised
    ``(cx, cy, w, h)``, ``heatmap`` ``(rows, cols)`` patch coverage of the box (or of the finding mask).
    """

    def __init__(self, tokens: torch.Tensor, image_index: torch.Tensor, phrases: torch.Tensor, boxes: torch.Tensor, heatmaps: torch.Tensor):
        self.tokens, self.image_index, self.phrases, self.boxes, self.heatmaps = tokens, image_index, phrases, boxes, heatmaps

    def __len__(self) -> int:
        return len(self.image_index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"tokens": self.tokens[self.image_index[index]], "phrase": self.phrases[index], "box": self.boxes[index],
                "heatmap": self.heatmaps[index]}


@torch.no_grad()
def head_features(encoder: GroundingEncoder, samples: Iterable[GroundingSample], batch_size: int = 64,
                  heatmap_target: str = "box") -> HeadFeatures:
    """Encode samples once: patch tokens per image, an embedding, box and coverage target per phrase.

    Args:
        encoder: the frozen encoder.
        samples: the training samples.
        batch_size: images per encoder pass.
        heatmap_target: ``box`` (the box's patch coverage) or ``mask`` (the finding mask's, where there is one).

    Returns:
        A :class:`HeadFeatures` on the CPU.

    Raises:
        ConfigError: the encoder has no patch tokens (named).
    """
    grid = encoder.grid()
    tokens, image_index, phrases, boxes, heatmaps = [], [], [], [], []
    pending: list[GroundingSample] = []
    count = 0

    def flush() -> None:
        nonlocal count
        raw, _ = encoder.patch_tokens(encoder.prepare_images([sample.image for sample in pending]))
        tokens.append(raw.cpu())
        for offset, sample in enumerate(pending):
            height, width = sample.size
            texts = [box["phrase"] for box in sample.boxes]
            phrases.append(encoder.encode_phrases(texts).cpu())
            pixel = torch.tensor([[box[key] for key in ("x", "y", "w", "h")] for box in sample.boxes], dtype=torch.float32)
            boxes.append(boxes_to_cxcywh(pixel, height, width))
            for index, box in enumerate(sample.boxes):
                target = sample.masks.get(index) if heatmap_target == "mask" else None
                target = box_mask(box, height, width) if target is None else target
                heatmaps.append(patch_coverage(torch.as_tensor(target), grid))
                image_index.append(count + offset)
        count += len(pending)
        pending.clear()

    for sample in samples:
        pending.append(sample)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return HeadFeatures(torch.cat(tokens), torch.tensor(image_index), torch.cat(phrases), torch.cat(boxes), torch.stack(heatmaps))


def _stored_by_finished_run(run: RunFolder, resumed_from: int | None, steps: int) -> str | None:
    """The head a run already stored when it is resumed after its last step (so resuming stores no duplicate)."""
    metrics_file = run.path / "metrics.json"
    if resumed_from is None or resumed_from < steps or not metrics_file.exists():
        return None
    return json.loads(metrics_file.read_text(encoding="utf-8")).get("grounding", {}).get("stored_model")


def run_ground_train(settings: GroundTrainSettings, builders: Any, *, resume: Path | None = None, progress: bool = True) -> TrainOutcome:
    """Train, evaluate and store a grounding head (see the module docstring).

    Args:
        settings: the job's settings.
        builders: the host's dataset-builder catalog.
        resume: a run folder to continue from its latest checkpoint.
        progress: show progress bars.

    Returns:
        The :class:`TrainOutcome`; ``metrics`` as in :meth:`GroundingScores.aggregate`.
    """
    context = init_distributed(settings.run.device)
    run = open_run_folder(settings.run, context, resume, "ground-train")
    run.attach_log()
    if resume is None:
        run.save_settings(settings)
    skipped = SkippedRecords(run.skipped_csv)
    output_root = Path(settings.run.output_root)
    train_records = load_grounding_records(settings.data, builders, output_root, settings.data.train_split, settings.data.max_train, skipped)
    eval_records = load_grounding_records(settings.data, builders, output_root, settings.data.eval_split, settings.data.max_eval, skipped)
    store = open_store(settings.encoder.store)
    encoder = GroundingEncoder.from_store(settings.encoder.name, store, device=str(context.device))
    seed_everything(settings.run.seed)
    features = head_features(encoder, iter_samples(train_records, skipped), heatmap_target=settings.heatmap_target)
    logger.info("%d training phrases on %d images", len(features), len(features.tokens))
    config = {"token_dim": int(features.tokens.shape[-1]), "text_dim": int(features.phrases.shape[-1]), "grid": list(encoder.grid()),
              **settings.head.model_dump()}
    head = PhraseGroundingHead(**config).to(context.device)
    criterion = GroundingLoss(settings.loss)

    def step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return criterion(model(batch["tokens"], batch["phrase"]), batch["box"], batch["heatmap"])

    loader = build_loader(features, batch_size=settings.train.batch_size, shuffle=True, seed=settings.run.seed, drop_last=True)
    trainer = Trainer(head, step, loader, settings.train, context, seed=settings.run.seed, precision=settings.run.precision,
                      checkpoint_dir=run.checkpoint_dir, tensorboard_dir=run.tensorboard_dir, progress=progress)
    result = trainer.fit()
    head.eval()
    outcome = TrainOutcome(run=run, steps=result.step, history=result.history)
    evaluation = evaluate_grounder(HeadGrounder(encoder, head, f"head on {encoder.record.ref}"), iter_samples(eval_records, skipped),
                                   settings.boxes.thresholds, settings.boxes.miou_threshold, progress=progress, total=len(eval_records))
    metrics = dict(evaluation.metrics, steps=result.step, train_phrases=len(features), skipped_records=len(skipped), encoder=encoder.record.ref)
    already_stored = _stored_by_finished_run(run, result.resumed_from, settings.train.steps)
    if already_stored:
        outcome.stored = metrics["stored_model"] = already_stored
    elif settings.save.name:
        head_store = open_store(settings.save.store) if settings.save.store else store
        overall = metrics["overall"]
        record = head_store.save(head, name=settings.save.name, factory=HEAD_FACTORY, task=HEAD_TASK, config=config,
                                 preprocessing=encoder.preprocessing, plugin="grounding",
                                 metrics={"box_acc@0.5": overall.get("box_acc@0.5"), "miou": overall.get("miou"), "cnr": overall.get("cnr"),
                                          "pointing": overall.get("pointing")},
                                 parent=encoder.record.ref if head_store.root == store.root else None,
                                 extra={"encoder": encoder.record.ref, "run": run.path.name})
        outcome.stored = record.ref
        metrics["stored_model"] = record.ref
    outcome.metrics = metrics
    run.write_metrics({"grounding": metrics, "history": result.history})
    page = HtmlReport(f"Grounding head on {encoder.record.ref}", run.path)
    page.section("Training").text(f"{result.step} steps on {len(features)} phrases of {len(features.tokens)} images; "
                                  f"{len(skipped)} records skipped (see skipped.csv)." + (f" Stored as {outcome.stored}." if outcome.stored else ""))
    if result.history:
        page.table(result.history[-5:])
    worst = worst_kept(evaluation, settings.examples)
    write_evaluation_section(page, run, metrics, worst, title="Held-out grounding")
    page.section("Config").preformatted((run.path / "config.yaml").read_text(encoding="utf-8"))
    page.write()
    return outcome
