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

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch.utils.data import Dataset

from workbench.checkpoints import seed_everything
from workbench.data.loaders import build_loader
from workbench.data.skipped import SkippedRecords
from workbench.jobs import JobStart, TrainOutcome
from workbench.report import HtmlReport, fmt
from workbench.training_job import StoreRequest, TrainingJob, run_training_job
from workbench_plugins.grounding.boxes import box_mask, boxes_to_cxcywh
from workbench_plugins.grounding.data import GroundingSample, iter_samples
from workbench_plugins.grounding.encoder import GroundingEncoder
from workbench.model_store import open_store
from workbench_plugins.grounding.evaluate import evaluate_grounder, worst_kept
from workbench_plugins.grounding.grounders import HEAD_TASK, HeadGrounder
from workbench_plugins.grounding.losses import GroundingLoss, patch_coverage
from workbench_plugins.grounding.models import PhraseGroundingHead
from workbench_plugins.grounding.pages import write_evaluation_section
from workbench_plugins.grounding.jobs.ground import load_grounding_records
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
        batch_size: images (and distinct phrases) per encoder pass.
        heatmap_target: ``box`` (the box's patch coverage) or ``mask`` (the finding mask's, where there is one).

    Returns:
        A :class:`HeadFeatures` on the CPU.

    Raises:
        ConfigError: the encoder has no patch tokens (named).
    """
    grid = encoder.grid()
    tokens, image_index, texts, boxes, heatmaps = [], [], [], [], []
    pending: list[GroundingSample] = []
    count = 0

    def flush() -> None:
        nonlocal count
        raw, _ = encoder.patch_tokens(encoder.prepare_images([sample.image for sample in pending]))
        tokens.append(raw.cpu())
        for offset, sample in enumerate(pending):
            height, width = sample.size
            texts.extend(box["phrase"] for box in sample.boxes)
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
    # Report phrases repeat (the same finding words on many images): each distinct one goes through the text tower once.
    distinct = list(dict.fromkeys(texts))
    embedded = torch.cat([encoder.encode_phrases(distinct[start:start + batch_size]).cpu() for start in range(0, len(distinct), batch_size)])
    position = {text: index for index, text in enumerate(distinct)}
    phrases = embedded[torch.tensor([position[text] for text in texts], dtype=torch.long)]
    return HeadFeatures(torch.cat(tokens), torch.tensor(image_index), phrases, torch.cat(boxes), torch.stack(heatmaps))


class GroundTrainJob(TrainingJob):
    """``ground train`` in the shared job shape: frozen features once, the head trained on them, evaluated, stored."""

    kind, section, plugin = "ground-train", "grounding", "grounding"

    def prepare(self, start: JobStart, skipped: SkippedRecords | None) -> None:
        """Records of both splits, the frozen encoder, and the training phrases' features."""
        settings, output_root = self.settings, Path(self.settings.run.output_root)
        self.skipped = skipped
        self.train_records = load_grounding_records(settings.data, self.builders, output_root, settings.data.train_split,
                                                    settings.data.max_train, skipped)
        self.eval_records = load_grounding_records(settings.data, self.builders, output_root, settings.data.eval_split,
                                                   settings.data.max_eval, skipped)
        self.store = open_store(settings.encoder.store)
        self.encoder = GroundingEncoder.from_store(settings.encoder.name, self.store, device=str(start.context.device))
        seed_everything(settings.run.seed)
        self.features = head_features(self.encoder, iter_samples(self.train_records, skipped), heatmap_target=settings.heatmap_target)
        logger.info("%d training phrases on %d images", len(self.features), len(self.features.tokens))
        self.criterion = GroundingLoss(settings.loss)

    def build_model(self, start: JobStart) -> torch.nn.Module:
        """The head, sized to the encoder's tokens, phrase embeddings and patch grid."""
        self.config = {"token_dim": int(self.features.tokens.shape[-1]), "text_dim": int(self.features.phrases.shape[-1]),
                       "grid": list(self.encoder.grid()), **self.settings.head.model_dump()}
        return PhraseGroundingHead(**self.config)

    def loader(self, start: JobStart) -> Any:
        """Shuffled batches of cached (tokens, phrase, box, heatmap) items."""
        return build_loader(self.features, batch_size=self.settings.train.batch_size, shuffle=True, seed=self.settings.run.seed,
                            drop_last=True)

    def step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The grounding loss of one batch (box and heatmap terms)."""
        return self.criterion(model(batch["tokens"], batch["phrase"]), batch["box"], batch["heatmap"])

    def evaluate(self, model: torch.nn.Module, start: JobStart, result: Any) -> dict[str, Any]:
        """Grounding scores on the held-out split (kept on ``self.evaluation`` for the page)."""
        grounder = HeadGrounder(self.encoder, model, f"head on {self.encoder.record.ref}", self.settings.heatmap)
        self.evaluation = evaluate_grounder(grounder, iter_samples(self.eval_records, self.skipped), self.settings.boxes.thresholds,
                                            self.settings.boxes.miou_threshold, progress=self.progress, total=len(self.eval_records))
        return dict(self.evaluation.metrics, train_phrases=len(self.features), encoder=self.encoder.record.ref)

    def store_request(self, model: torch.nn.Module, metrics: Mapping[str, Any], start: JobStart) -> StoreRequest | None:
        """The head, in ``save.store`` (default: the encoder's store), its parent the encoder when both share a store."""
        if not self.settings.save.name:
            return None
        head_store = open_store(self.settings.save.store) if self.settings.save.store else self.store
        overall = metrics["overall"]
        return StoreRequest(head_store, model, HEAD_FACTORY, HEAD_TASK, self.config, self.encoder.preprocessing,
                            metrics={key: overall.get(key) for key in ("box_acc@0.5", "miou", "cnr", "pointing")},
                            parent=self.encoder.record.ref if head_store.root == self.store.root else None,
                            extra={"encoder": self.encoder.record.ref, "run": start.run.path.name, "heatmap": self.settings.heatmap})

    def write_pages(self, start: JobStart, metrics: Mapping[str, Any], result: Any, outcome: TrainOutcome) -> None:
        """``index.html``: training summary, held-out scores with the worst cases, the config."""
        run, features = start.run, self.features
        page = HtmlReport(f"Grounding head on {self.encoder.record.ref}", run.path)
        page.section("Training", lead=f"How the grounding head learned to turn {self.encoder.record.ref}'s features into "
                                      "phrase heatmaps: the training run and its loss curve.")
        page.text(f"{fmt(result.step)} steps on {fmt(len(features))} phrases of {fmt(len(features.tokens))} images; "
                  f"{fmt(metrics['skipped_records'])} records skipped (see skipped.csv)."
                  + (f" Stored as {outcome.stored}." if outcome.stored else ""))
        if result.history:
            page.history([dict(row) for row in result.history], name="training-curves",
                         caption=f"Each logged training scalar per step, learning rate last (final loss {fmt(result.history[-1].get('loss'))}).")
        write_evaluation_section(page, run, dict(metrics), worst_kept(self.evaluation, self.settings.examples), title="Held-out grounding")
        page.section("Config", lead="The resolved settings this run used (config.yaml), to repeat it exactly.").preformatted((run.path / "config.yaml").read_text(encoding="utf-8"))
        page.write()


def run_ground_train(settings: GroundTrainSettings, builders: Any, *, resume: Path | None = None, progress: bool = True) -> TrainOutcome:
    """Train, evaluate and store a grounding head (see the module docstring and :class:`GroundTrainJob`).

    Args:
        settings: the job's settings.
        builders: the host's dataset-builder catalog.
        resume: a run folder to continue from its latest checkpoint.
        progress: show progress bars.

    Returns:
        The :class:`TrainOutcome`; ``metrics`` as in :meth:`GroundingScores.aggregate`.
    """
    return run_training_job(GroundTrainJob(settings, builders, progress=progress), resume=resume)
