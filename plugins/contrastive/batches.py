"""From a collated batch of pairs to what an objective reads.

The cached dataset gives images and report texts; this step adds what changes
every step: token ids, FLAIR sub-captions, COSMOS crops and sentence subsets,
and the duplicate ids that let identical reports count as positives. Its
randomness comes from one draw of the global torch generator per batch, which
the checkpoint restores, so a resumed run draws the same sub-captions and crops.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from workbench.data.loaders import EpochDataLoader, build_loader
from workbench.distributed import DistributedContext
from workbench.train import TrainSettings
from workbench_plugins.contrastive.text import normalise_text, sample_subcaption_sentences, split_sentences


def report_ids(texts: Sequence[str]) -> torch.Tensor:
    """``(N,)`` int64 ids equal exactly for identical reports (case and spacing aside), on every rank.

    A hash rather than positional group numbers, because under DDP the ids of
    gathered samples from other ranks must agree with this rank's.
    """
    values = []
    for text in texts:
        digest = hashlib.blake2b(normalise_text(str(text)).casefold().encode("utf-8"), digest_size=8).digest()
        values.append(int.from_bytes(digest, "little") & (2**62 - 1))
    return torch.tensor(values, dtype=torch.int64)


def sentence_id_rows(sentence_lists: Sequence[Sequence[str]], width: int | None = None) -> torch.Tensor:
    """``(N, W)`` int64: the :func:`report_ids` of each list's sentences, padded with -1.

    Args:
        sentence_lists: N lists of sentences.
        width: W; None: the longest list. A longer list is cut to ``width``.
    """
    width = max((len(items) for items in sentence_lists), default=1) if width is None else width
    rows = torch.full((len(sentence_lists), max(int(width), 1)), -1, dtype=torch.int64)
    for row, items in enumerate(sentence_lists):
        if items:
            ids = report_ids(list(items)[:width])
            rows[row, :ids.numel()] = ids
    return rows


def random_resized_crops(images: torch.Tensor, count: int, size: int, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """``count`` random crops per image, resized to ``size``: ``(B, 3, S, S)`` -> ``(B, count, 3, size, size)``.

    Crops keep the image's aspect ratio (radiographs are not stretched) and
    cover ``scale`` of its area.
    """
    batch, channels, height, width = images.shape
    crops = []
    for _ in range(count):
        area = torch.empty(batch).uniform_(*scale, generator=generator)
        side = (area.sqrt() * min(height, width)).clamp(min=4).long()
        top = (torch.rand(batch, generator=generator) * (height - side + 1)).long()
        left = (torch.rand(batch, generator=generator) * (width - side + 1)).long()
        per_image = [F.interpolate(images[i:i + 1, :, top[i]:top[i] + side[i], left[i]:left[i] + side[i]], size=(size, size),
                                   mode="bilinear", align_corners=False, antialias=True) for i in range(batch)]
        crops.append(torch.cat(per_image))
    return torch.stack(crops, dim=1)


class PairBatchPreparer:
    """Make an objective's inputs from a collated pair batch.

    Args:
        objective: the loss module; its ``extra_inputs()`` (``ExtraInput`` records
            or key names) says which extra inputs it reads.
        max_sentences: sub-captions hold 1..``max_sentences`` sentences.
        local_crops: COSMOS local crops per image.

    Always produced: ``images`` (B, 3, S, S), ``token_ids`` (B, L) of the full
    report, ``duplicate_ids`` (B,). On request: ``subcaption_ids`` (B, L);
    ``global_images`` (B, 2, 3, S, S) and ``local_images`` (B, local_crops, 3, S, S)
    (COSMOS); ``sentence_subset_ids`` (B, L).
    """

    def __init__(self, objective: Any, max_sentences: int = 3, local_crops: int = 2):
        declared = objective.extra_inputs() if callable(getattr(objective, "extra_inputs", None)) else ()
        self.extra_inputs = tuple(getattr(item, "key", item) for item in declared)
        self.local_crops = int(local_crops)
        self.max_sentences = max_sentences

    def __call__(self, batch: dict[str, Any], encoder: Any) -> dict[str, torch.Tensor]:
        """The objective's inputs, on the images' device."""
        images = batch["image"]
        device = images.device
        texts = [str(text) for text in batch["report_text"]]
        sentences = batch.get("report_sentences") or [split_sentences(text) for text in texts]
        inputs: dict[str, torch.Tensor] = {
            "images": images,
            "token_ids": encoder.tokenize(texts).to(device),
            "duplicate_ids": report_ids(texts).to(device),
        }
        if not self.extra_inputs:
            return inputs
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        if "subcaption_ids" in self.extra_inputs or "sentence_subset_ids" in self.extra_inputs:
            report_sentences = [list(items) or [text] for items, text in zip(sentences, texts)]
            chosen = [sample_subcaption_sentences(items, self.max_sentences, generator) for items in report_sentences]
            token_ids = encoder.tokenize([" ".join(items) for items in chosen]).to(device)
            for key in ("subcaption_ids", "sentence_subset_ids"):
                if key in self.extra_inputs:
                    inputs[key] = token_ids
            if "subcaption_sentence_ids" in self.extra_inputs:
                inputs["subcaption_sentence_ids"] = sentence_id_rows(chosen, self.max_sentences).to(device)
            if "report_sentence_ids" in self.extra_inputs:
                inputs["report_sentence_ids"] = sentence_id_rows(report_sentences).to(device)
        if "global_images" in self.extra_inputs:
            size = images.shape[-1]
            inputs["global_images"] = random_resized_crops(images, 2, size, (0.5, 1.0), generator).to(device)
        if "local_images" in self.extra_inputs:
            # The towers' position embeddings are fixed-size, so local crops are resized to the full input size.
            inputs["local_images"] = random_resized_crops(images, self.local_crops, images.shape[-1], (0.1, 0.4), generator).to(device)
        return inputs


def build_pair_loader(dataset: Any, train: TrainSettings, seed: int, context: DistributedContext) -> EpochDataLoader:
    """The training loader: shuffled per epoch, sharded across ranks, last partial batch dropped.

    Full batches keep every step's contrastive task equally hard (the number
    of negatives is the batch size) and the ranks' batches the same size.
    """
    return build_loader(dataset, batch_size=train.batch_size, shuffle=True, seed=seed, num_workers=train.num_workers,
                        drop_last=True, distributed=context.enabled, rank=context.rank, world_size=context.world_size)
