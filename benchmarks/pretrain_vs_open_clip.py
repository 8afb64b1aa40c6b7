"""Our ``pretrain`` against open_clip's own trainer on the same work, in one run.

Run: ``.venv/bin/python benchmarks/pretrain_vs_open_clip.py [--n 256] [--steps 16] [--warmup 3]``
(needs the ``bench`` extra: ``pip install -e '.[bench]'``, which ``make bench`` does).

Same model (``ViT-S-32`` with open_clip's own text tower: our preset
``dual-vit-s-32-openclip`` builds exactly open_clip's ``ViT-S-32``), batch 32,
fp32, CLIP loss, and the same data: ``--n`` chest-phantom PNGs with their
reports, given to open_clip as a CSV (``python -m open_clip_train.main
--dataset-type csv ...``) and to ours as a manifest of the same files.

For both it takes the median samples/s over the steps after ``--warmup``
(open_clip: from its per-step log line, which times data + compute; ours: the
time between optimizer steps, data included), counts the model's FLOPs per
sample for forward + backward (``torch.utils.flop_counter``), measures this
machine's fp32 matmul peak in the same run, and writes
``benchmarks/results/pretrain_vs_open_clip.json`` with ``ours_samples_per_s``,
``open_clip_samples_per_s``, ``ratio``, ``ours_mfu`` and ``open_clip_mfu``
(model FLOP/s over the measured peak). On a CUDA machine both trainers run on
the GPU and the figures are the GPU's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from workbench.config import load_settings  # noqa: E402
from workbench.data.manifests import read_manifest  # noqa: E402
from workbench.data.phantoms import write_cxr_phantoms  # noqa: E402
from workbench.devices import select_device  # noqa: E402
from workbench.host import create_plugin_manager  # noqa: E402
from workbench_plugins.contrastive.jobs.pretrain import run_pretrain  # noqa: E402
from workbench_plugins.contrastive.settings import PretrainSettings  # noqa: E402
from workbench_plugins.contrastive.text import usable_report  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "pretrain_vs_open_clip.json"
BATCH = 32
PRESET = "dual-vit-s-32-openclip"
_OPEN_CLIP_RATE = re.compile(r"Batch \(t\): [0-9.]+, ([0-9.]+)/s")


def write_data(folder: Path, count: int) -> tuple[Path, Path]:
    """Chest phantoms as PNG + an open_clip CSV (filepath, title) + our manifest (image, report) of the same files."""
    manifest = folder / "phantoms" / "manifest.jsonl"
    if not manifest.exists():
        manifest = write_cxr_phantoms(folder / "phantoms", count, seed=0, size=256, formats=("png",))
    records = read_manifest(manifest)
    rows = [(record.get("image_png") or record["image"], usable_report(record["report"])) for record in records]
    open_clip_csv, ours_csv = folder / "open_clip.csv", folder / "ours.csv"
    import csv

    for path, header in ((open_clip_csv, ("filepath", "title")), (ours_csv, ("image", "report"))):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return open_clip_csv, ours_csv


def matmul_peak_flops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of a ``size``-square matmul on ``device`` (2 n^3 FLOPs each)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = 0.0
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        (a @ b).sum().item()
        best = max(best, 2 * size**3 / (time.perf_counter() - started))
    return best


def flops_per_sample(device: torch.device) -> float:
    """Forward + backward FLOPs of one CLIP step of the model, per sample."""
    from torch.utils.flop_counter import FlopCounterMode

    from workbench.registry import create_model
    from workbench_plugins.contrastive.losses import build_objective

    model = create_model(PRESET, pretrained_text=None).to(device)
    objective = build_objective("clip", model)
    size = model.image_size
    batch = {"images": torch.randn(BATCH, 3, size, size, device=device),
             "token_ids": torch.randint(1, 1000, (BATCH, model.context_length), device=device)}
    counter = FlopCounterMode(display=False)
    with counter:
        objective(model, batch)["loss"].backward()
    return counter.get_total_flops() / BATCH


def run_open_clip(data_csv: Path, folder: Path, steps: int, per_epoch: int, workers: int, device: torch.device) -> list[float]:
    """open_clip's trainer on the CSV; returns its per-step samples/s (from the log)."""
    epochs = math.ceil(steps / per_epoch)
    command = [sys.executable, "-m", "open_clip_train.main", "--dataset-type", "csv", "--train-data", str(data_csv),
               "--csv-img-key", "filepath", "--csv-caption-key", "title", "--csv-separator", ",", "--precision", "fp32",
               "--model", "ViT-S-32", "--batch-size", str(BATCH), "--epochs", str(epochs), "--workers", str(workers),
               "--lr", "5e-4", "--warmup", "2", "--log-every-n-steps", "1", "--save-frequency", "0", "--zeroshot-frequency", "0",
               "--val-frequency", "0", "--report-to", "", "--logs", str(folder / "open_clip_logs"), "--name", f"bench-{int(time.time())}",
               "--seed", "0", "--device", device.type]
    completed = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=dict(os.environ))
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        raise RuntimeError(f"open_clip_train failed:\n{output[-4000:]}")
    return [float(match) for match in _OPEN_CLIP_RATE.findall(output)]


def run_ours(data_csv: Path, folder: Path, steps: int, device: torch.device, channels_last: bool, compile_model: bool) -> tuple[list[float], float]:
    """Our pretrain job on the same files; returns (per-step samples/s, seconds to build the decoded-image cache)."""
    settings = load_settings(PretrainSettings, None, [], defaults={
        "run": {"output_root": str(folder / "ours_runs"), "seed": 0, "device": str(device), "precision": "fp32"},
        "data": {"dataset": "report-manifest", "root": str(data_csv), "train_split": ["train"], "eval_split": [], "cache": "memory"},
        "model": {"preset": PRESET, "options": {"pretrained_text": None}, "channels_last": channels_last, "compile": compile_model},
        "objective": {"name": "clip"},
        "train": {"steps": steps, "batch_size": BATCH, "lr": 5e-4, "warmup_steps": 2, "checkpoint_every": steps, "log_every": steps},
        "eval": {"retrieval": False, "zeroshot": False, "linear_probe": False, "examples": 0},
        "save": {"name": None},
    })
    stamps: list[float] = []
    started = time.perf_counter()

    def stamp(step: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    host = create_plugin_manager()
    run_pretrain(settings, host.datasets.builders, after_optimizer_step=stamp, progress=False)
    first_step = stamps[0]
    rates = [BATCH / (later - earlier) for earlier, later in zip(stamps, stamps[1:])]
    return rates, first_step - started


def median_after(values: list[float], warmup: int) -> float:
    """Median of ``values`` after the first ``warmup`` (all of them when there are too few)."""
    kept = values[warmup:] or values
    return float(statistics.median(kept))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="chest phantoms (all used for training)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="open_clip data-loader workers")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile our image tower")
    parser.add_argument("--folder", type=Path, default=REPO_ROOT / "runs" / "bench-pretrain-vs-open-clip")
    args = parser.parse_args(argv)
    device = select_device("auto")
    create_plugin_manager()  # fills the model registry with the plugins' presets
    args.folder.mkdir(parents=True, exist_ok=True)
    open_clip_csv, ours_csv = write_data(args.folder, args.n)
    peak = matmul_peak_flops(device)
    flops = flops_per_sample(device)
    open_clip_rates = run_open_clip(open_clip_csv, args.folder, args.steps, args.n // BATCH, args.workers, device)
    ours_rates, cache_s = run_ours(ours_csv, args.folder, args.steps, device, args.channels_last, args.compile)
    ours, theirs = median_after(ours_rates, args.warmup), median_after(open_clip_rates, args.warmup)
    result: dict[str, Any] = {
        "ours_samples_per_s": ours, "open_clip_samples_per_s": theirs, "ratio": ours / theirs,
        "ours_mfu": ours * flops / peak, "open_clip_mfu": theirs * flops / peak,
        "flops_per_sample_gflop": flops / 1e9, "matmul_peak_gflops": peak / 1e9,
        "ours_step_rates": ours_rates, "open_clip_step_rates": open_clip_rates, "ours_first_step_after_s": cache_s,
        "settings": {"model": "ViT-S-32 (open_clip text tower)", "batch_size": BATCH, "precision": "fp32", "images": args.n,
                     "steps": args.steps, "warmup_steps_dropped": args.warmup, "open_clip_workers": args.workers,
                     "ours_channels_last": args.channels_last, "ours_compile": args.compile},
        "device": str(device), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    key = "cuda" if device.type == "cuda" else "cpu"
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    existing[key] = result
    existing.update({name: result[name] for name in ("ours_samples_per_s", "open_clip_samples_per_s", "ratio", "ours_mfu", "open_clip_mfu")} if key == "cpu" else {})
    RESULTS.write_text(json.dumps(existing, indent=2) + "\n")
    print(json.dumps({name: result[name] for name in ("ours_samples_per_s", "open_clip_samples_per_s", "ratio", "ours_mfu", "open_clip_mfu")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
