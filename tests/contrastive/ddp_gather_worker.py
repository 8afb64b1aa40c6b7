"""Gathered negatives under DDP, run by ``tests/contrastive/test_losses.py`` under torchrun (gloo, 2 CPU ranks).

Each rank takes its half of one fixed global batch and

1. computes every objective case's loss on its half; the mean over ranks goes to
   ``losses.json`` (rank 0), for the test to compare with the single-process loss
   on the whole batch;
2. takes one SGD step with ``DistributedDataParallel`` around
   :class:`EncoderWithObjective` (CLIP and SigLIP) and writes its gradients and
   updated parameters to ``<case>-rank<r>.safetensors``.

The model and batch come from :func:`build_model` and :func:`fixed_batch`, which
the test calls too, so both sides see the same weights and samples.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from workbench.fsutil import atomic_write_json
from workbench_plugins.contrastive.losses import EncoderWithObjective, build_objective
from workbench_plugins.contrastive.models import PRESETS, ReportImageDualEncoder

IMAGE_SIZE = 32
GLOBAL_BATCH = 6
# Samples 3 and 5 repeat reports 0 and 1 with other spelling (the same report once normalised, so the same
# duplicate id, but other tokens and embeddings), across the rank boundary: rank 0 holds 0-2, rank 1 holds 3-5.
REPORTS = ["No acute process.", "Small left effusion.", "Cardiomegaly. No edema.", "NO ACUTE PROCESS", "Normal chest.", "Small left effusion"]
DUPLICATE_OF = [0, 1, 2, 0, 4, 1]

# case -> (objective name, options, use duplicate_ids)
CASES: dict[str, tuple[str, dict[str, Any], bool]] = {
    "clip": ("clip", {}, False),
    "clip-duplicates": ("clip", {}, True),
    "clip-local-duplicates": ("clip", {"local_loss": True}, True),
    "siglip": ("siglip", {}, False),
    "siglip-duplicates": ("siglip", {}, True),
    "flair-duplicates": ("flair", {}, True),
}
DDP_CASES = ("clip", "siglip")


def build_model(logit_bias: bool = True) -> ReportImageDualEncoder:
    """The tiny dual encoder (random text tower, 32-pixel ViT) from seed 0, in eval mode (no dropout)."""
    torch.manual_seed(0)
    model = PRESETS[0].build(pretrained_text=None, image_size=IMAGE_SIZE, context_length=16, init_logit_bias=-10.0 if logit_bias else None)
    return model.eval()


def fixed_batch(model: ReportImageDualEncoder) -> dict[str, torch.Tensor]:
    """The global batch: images ``(6, 3, 32, 32)``, report and sub-caption tokens, duplicate ids ``(6,)``."""
    generator = torch.Generator().manual_seed(1)
    subcaptions = [[report, report.split(".")[0] + "."] for report in REPORTS]
    return {
        "images": torch.randn(GLOBAL_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "token_ids": model.tokenize(REPORTS),
        "subcaption_ids": torch.stack([model.tokenize(pair) for pair in subcaptions]),
        "duplicate_ids": torch.tensor(DUPLICATE_OF, dtype=torch.long),
    }


def case_batch(batch: dict[str, torch.Tensor], case: str) -> dict[str, torch.Tensor]:
    """``batch`` without ``duplicate_ids`` unless ``case`` uses them."""
    return {key: value for key, value in batch.items() if key != "duplicate_ids" or CASES[case][2]}


def shard(batch: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """Rank ``rank``'s contiguous slice of every tensor (rank order = gathered order)."""
    size = GLOBAL_BATCH // world_size
    return {key: value[rank * size:(rank + 1) * size] for key, value in batch.items()}


def main() -> None:
    """Run both checks on this rank and write the results under ``--out``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = build_model()
    batch = fixed_batch(model)
    losses = {}
    for case, (name, options, _) in CASES.items():
        objective = build_objective(name, model, **options)
        with torch.no_grad():
            loss = objective(model, shard(case_batch(batch, case), rank, world_size))["loss"]
        dist.all_reduce(loss)
        losses[case] = loss.item() / world_size
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        atomic_write_json(out / "losses.json", losses)
    for case in DDP_CASES:
        encoder = build_model(logit_bias=case == "siglip")
        trained = torch.nn.parallel.DistributedDataParallel(EncoderWithObjective(encoder, build_objective(case, encoder)))
        optimizer = torch.optim.SGD(trained.parameters(), lr=0.5)
        trained(shard(case_batch(fixed_batch(encoder), case), rank, world_size))["loss"].backward()
        gradients = {f"grad.{key}": value.grad.detach().clone() for key, value in trained.module.encoder.named_parameters() if value.grad is not None}
        optimizer.step()
        parameters = {f"param.{key}": value.detach().clone() for key, value in trained.module.encoder.named_parameters()}
        dist.barrier()
        save_file({**gradients, **parameters}, str(out / f"{case}-rank{rank}.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
