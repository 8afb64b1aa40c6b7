"""A small but real training job for the train-loop tests, run as a subprocess (or under torchrun).

It writes noise PNGs with a learnable label (bright or dark), one corrupt PNG
(skipped and listed), reads them through the workbench data layer with random
augmentation (MONAI noise and flips), trains a small CNN with dropout through
:class:`workbench.train.Trainer`, and saves the final weights to ``--out``.
Every random source a real job has is here: augmentation, dropout, shuffling.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, EnsureTyped, RandFlipd, RandGaussianNoised, Resized
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from tests.helpers.kill_resume import sigkill_at
from workbench.checkpoints import seed_everything
from workbench.data.loaders import ValidateImaged, build_dataset, build_loader
from workbench.data.readers import LoadWorkbenchImaged
from workbench.data.skipped import SkippedRecords
from workbench.distributed import init_distributed, shutdown, wrap_ddp
from workbench.train import Trainer, TrainSettings


def write_images(folder: Path, count: int) -> list[dict]:
    """``count`` 24x24 noise PNGs, label 1 when bright, plus one corrupt file; returns manifest records."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    records = []
    for index in range(count):
        label = index % 2
        pixels = np.clip(rng.normal(150 if label else 100, 30, (24, 24)), 0, 255).astype(np.uint8)
        path = folder / f"img{index:03d}.png"
        if not path.exists():
            Image.fromarray(pixels).save(path)
        records.append({"id": f"img{index:03d}", "image": str(path), "label": label})
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    records.insert(5, {"id": "corrupt", "image": str(corrupt), "label": 0})
    return records


class SmallNet(nn.Module):
    """Conv -> pool -> dropout -> linear; ``(B, 1, 16, 16) -> (B, 2)``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(128, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(images)))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--checkpoint-every", type=int, default=3)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--images", type=int, default=22)
    parser.add_argument("--rank-dir", type=Path, default=None, help="each rank writes the ids it trained on and its weights here")
    args = parser.parse_args(argv)

    context = init_distributed("cpu")
    seed_everything(11)
    model = SmallNet()
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=0.01,
                             warmup_steps=2, checkpoint_every=args.checkpoint_every, log_every=2)
    skipped = SkippedRecords(args.run_dir / "skipped.csv" if context.is_main else None)
    transform = Compose([
        LoadWorkbenchImaged(keys="image"), ValidateImaged(keys="image", spatial_ndim=2),
        Resized(keys="image", spatial_size=(16, 16)),
        EnsureTyped(keys="image", data_type="tensor", track_meta=False),
        RandGaussianNoised(keys="image", prob=0.5, std=0.05), RandFlipd(keys="image", prob=0.5, spatial_axis=1),
    ])
    dataset = build_dataset(write_images(args.data_dir, args.images), transform, cache="memory", skipped=skipped)
    loader = build_loader(dataset, batch_size=settings.batch_size, shuffle=True, seed=3, distributed=context.enabled,
                          rank=context.rank, world_size=context.world_size)
    seen: list[list[str]] = []  # ids per batch

    def step(network: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        seen.append(list(batch["id"]))
        logits = network(batch["image"])
        return {"loss": nn.functional.cross_entropy(logits, batch["label"].long())}

    trainer = Trainer(wrap_ddp(model, context), step, loader, settings, context, seed=5, precision="fp32",
                      checkpoint_dir=args.run_dir / "checkpoints", tensorboard_dir=args.run_dir / "tensorboard",
                      after_optimizer_step=sigkill_at(args.kill_at), progress=False)
    result = trainer.fit()
    if args.rank_dir is not None:
        args.rank_dir.mkdir(parents=True, exist_ok=True)
        (args.rank_dir / f"seen-rank{context.rank}.json").write_text(json.dumps(seen))
        save_file({name: value.contiguous() for name, value in model.state_dict().items()}, str(args.rank_dir / f"weights-rank{context.rank}.safetensors"))
    if context.is_main:
        save_file({name: value.contiguous() for name, value in model.state_dict().items()}, str(args.out))
        (args.run_dir / "result.json").write_text(json.dumps({"step": result.step, "resumed_from": result.resumed_from}))
    shutdown(context)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
