"""Our ``pretrain`` against open_clip's own trainer on the same work, in one run.

Run: ``.venv/bin/python benchmarks/pretrain_vs_open_clip.py [--n 256] [--steps 16] [--warmup 3] [--runs 3] [--pairs fp32 ...]``
(needs the ``bench`` extra: ``pip install -e '.[bench]'``, which ``make bench`` does);
``--tiny`` runs a two-layer model for a few steps, one run each, to check the script
end to end (``tests/test_bench_pretrain_tiny.py``); its figures mean nothing.

Equal work on both sides: the same model (``ViT-S-32`` with open_clip's own text
tower: our preset ``dual-vit-s-32-openclip`` builds exactly open_clip's
``ViT-S-32``; ``--tiny`` gives both the same two-layer config through open_clip's
``local-dir:`` schema), the same context length (77 tokens), batch 32, CLIP
loss, and the same files: ``--n`` chest-phantom PNGs with their reports, given
to open_clip as a CSV (``python -m open_clip_train.main --dataset-type csv ...``)
and to ours as a manifest of the same files.

Rows (each side run ``--runs`` times, the sides alternating, so load on a shared
machine falls on both): ours fp32 vs open_clip ``fp32``; ours bf16 vs open_clip
``amp_bf16``; ours ``auto`` (whatever :func:`workbench.devices.choose_precision`
picks here; the same job as that precision's row, so it reuses those runs) vs
open_clip's default ``amp`` and vs its ``fp32``. A run's rate is the median
samples/s over its steps after ``--warmup`` (open_clip: its per-step log line,
data + compute; ours: the time between optimizer steps, data included); a side's
figure is the median over runs, with the spread (min, max). MFU is the model's
FLOP/s (forward + backward, ``torch.utils.flop_counter``) over the matmul peak
measured in the same run for the precision in use (fp32, bf16, fp16).

Writes ``benchmarks/results/pretrain_vs_open_clip.json`` (``--out`` elsewhere):
the fp32 row as ``ours_samples_per_s``, ``open_clip_samples_per_s``, ``ratio``,
``ours_mfu``, ``open_clip_mfu``, plus ``context_length``, ``fp32_ratio``,
``bf16_ratio``, ``auto_vs_open_clip_fp32_ratio``, ``auto_vs_open_clip_default_ratio``,
and under the device's key every row. On a CUDA machine the figures are the GPU's.
"""

from __future__ import annotations

import argparse
import csv
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
from workbench.devices import choose_precision, select_device, torch_dtype  # noqa: E402
from workbench.host import create_plugin_manager  # noqa: E402
from workbench_plugins.contrastive.jobs.pretrain import run_pretrain  # noqa: E402
from workbench_plugins.contrastive.settings import PretrainSettings  # noqa: E402
from workbench_plugins.contrastive.text import usable_report  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "pretrain_vs_open_clip.json"
BATCH = 32
CONTEXT_LENGTH = 77
PRESET = "dual-vit-s-32-openclip"
FULL_MODEL = "ViT-S-32"
# --tiny: one config both sides read (open_clip's ``local-dir:`` schema), small enough for a test.
TINY_CONFIG = {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
               "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
# (row name, our precision, open_clip --precision); open_clip's default is ``amp`` (fp16 autocast).
ROWS = (("fp32", "fp32", "fp32"), ("bf16", "bf16", "amp_bf16"), ("auto_vs_open_clip_default", "auto", "amp"),
        ("auto_vs_open_clip_fp32", "auto", "fp32"))
OPEN_CLIP_DTYPE = {"fp32": "fp32", "amp_bf16": "bf16", "amp": "fp16"}
# What one round runs, side by side: ours ``auto`` is one of our two precisions, so it has no runs of its own.
PAIRS: tuple[tuple[str | None, str], ...] = (("fp32", "fp32"), ("bf16", "amp_bf16"), (None, "amp"))
_OPEN_CLIP_RATE = re.compile(r"Batch \(t\): [0-9.]+, ([0-9.eE+-]+)/s")


def write_data(folder: Path, count: int, size: int) -> tuple[Path, Path]:
    """Chest phantoms as PNG + an open_clip CSV (filepath, title) + our manifest (image, report) of the same files."""
    manifest = folder / "phantoms" / "manifest.jsonl"
    if not manifest.exists():
        manifest = write_cxr_phantoms(folder / "phantoms", count, seed=0, size=size, formats=("png",))
    rows = [(record.get("image_png") or record["image"], usable_report(record["report"])) for record in read_manifest(manifest)]
    open_clip_csv, ours_csv = folder / "open_clip.csv", folder / "ours.csv"
    for path, header in ((open_clip_csv, ("filepath", "title")), (ours_csv, ("image", "report"))):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return open_clip_csv, ours_csv


def matmul_peak_flops(device: torch.device, precision: str, max_size: int = 2048, repeats: int = 3) -> float:
    """Best FLOP/s of a square matmul in ``precision`` on ``device`` (2 n^3 FLOPs each).

    The side doubles from 256 until one product takes 0.2 s or reaches ``max_size``, so an
    emulated precision (bf16 on a CPU without bf16 instructions: 1/70 of fp32) is measured in seconds.
    """
    dtype, size = torch_dtype(precision), 256
    while True:
        a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
        best = 0.0
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            (a @ b).float().sum().item()
            elapsed = time.perf_counter() - started
            best = max(best, 2 * size**3 / elapsed)
        if size >= max_size or elapsed >= 0.2:
            return best
        size *= 2


def flops_per_sample(device: torch.device, model_options: dict[str, Any]) -> float:
    """Forward + backward FLOPs of one CLIP step of the model, per sample (fp32; the count is the same in any precision)."""
    from torch.utils.flop_counter import FlopCounterMode

    from workbench.registry import create_model
    from workbench_plugins.contrastive.losses import build_objective

    model = create_model(PRESET, **model_options).to(device)
    objective = build_objective("clip", model)
    size = model.image_size
    batch = {"images": torch.randn(BATCH, 3, size, size, device=device),
             "token_ids": torch.randint(1, 1000, (BATCH, model.context_length), device=device)}
    counter = FlopCounterMode(display=False)
    with counter:
        objective(model, batch)["loss"].backward()
    return counter.get_total_flops() / BATCH


def run_open_clip(data_csv: Path, folder: Path, model: str, precision: str, steps: int, per_epoch: int, workers: int,
                  device: torch.device) -> list[float]:
    """open_clip's trainer on the CSV in ``precision`` (its ``--precision``); returns its per-step samples/s (from the log)."""
    epochs = math.ceil(steps / per_epoch)
    command = [sys.executable, "-m", "open_clip_train.main", "--dataset-type", "csv", "--train-data", str(data_csv),
               "--csv-img-key", "filepath", "--csv-caption-key", "title", "--csv-separator", ",", "--precision", precision,
               "--model", model, "--force-context-length", str(CONTEXT_LENGTH), "--batch-size", str(BATCH),
               "--epochs", str(epochs), "--workers", str(workers), "--lr", "5e-4", "--warmup", "2", "--log-every-n-steps", "1",
               "--save-frequency", "0", "--zeroshot-frequency", "0", "--val-frequency", "0", "--report-to", "",
               "--logs", str(folder / "open_clip_logs"), "--name", f"bench-{precision}-{time.time_ns()}", "--seed", "0",
               "--device", device.type]
    completed = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=dict(os.environ))
    output = completed.stdout + completed.stderr
    rates = [float(match) for match in _OPEN_CLIP_RATE.findall(output)]
    if completed.returncode != 0 or not rates:
        raise RuntimeError(f"open_clip_train --precision {precision} failed (exit {completed.returncode}):\n{output[-4000:]}")
    return rates


def run_ours(data_csv: Path, folder: Path, model_options: dict[str, Any], precision: str, steps: int, device: torch.device,
             channels_last: bool, compile_model: bool, batch: int = BATCH) -> list[float]:
    """Our pretrain job on the same files in ``precision`` with ``batch`` samples a step; returns its per-step samples/s."""
    settings = load_settings(PretrainSettings, None, [], defaults={
        "run": {"output_root": str(folder / "ours_runs"), "seed": 0, "device": str(device), "precision": precision},
        "data": {"dataset": "report-manifest", "root": str(data_csv), "train_split": ["train"], "eval_split": [], "cache": "memory"},
        "model": {"preset": PRESET, "options": model_options, "channels_last": channels_last, "compile": compile_model},
        "objective": {"name": "clip"},
        "train": {"steps": steps, "batch_size": batch, "lr": 5e-4, "warmup_steps": 2, "checkpoint_every": steps, "log_every": steps},
        "eval": {"retrieval": False, "zeroshot": False, "linear_probe": False, "examples": 0},
        "save": {"name": None},
    })
    stamps: list[float] = []

    def stamp(step: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    run_pretrain(settings, create_plugin_manager().datasets.builders, after_optimizer_step=stamp, progress=False)
    return [batch / (later - earlier) for earlier, later in zip(stamps, stamps[1:])]


def median_after(values: list[float], warmup: int) -> float:
    """Median of ``values`` after the first ``warmup`` (all of them when there are too few)."""
    return float(statistics.median(values[warmup:] or values))


def side_summary(run_rates: list[list[float]], warmup: int, precision: str, flops: float, peaks: dict[str, float]) -> dict[str, Any]:
    """One side of a row: median over runs of each run's median rate, the spread, and MFU against ``precision``'s peak."""
    per_run = [median_after(rates, warmup) for rates in run_rates]
    median = float(statistics.median(per_run))
    return {"precision": precision, "samples_per_s": median, "spread": [min(per_run), max(per_run)],
            "relative_spread": (max(per_run) - min(per_run)) / median, "per_run": per_run, "step_rates": run_rates,
            "mfu": median * flops / peaks[precision]}


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Every row's runs, alternating ours and open_clip within each round; returns the device's result."""
    model_options: dict[str, Any] = {"pretrained_text": None, "context_length": CONTEXT_LENGTH}
    open_clip_model = FULL_MODEL
    if args.tiny:
        config_dir = args.folder / "tiny_model"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
        open_clip_model = f"local-dir:{config_dir}"
        model_options["image_tower"] = open_clip_model
    open_clip_csv, ours_csv = write_data(args.folder, args.n, 128 if args.tiny else 256)
    peak_size = 256 if args.tiny else 2048
    peaks = {precision: matmul_peak_flops(device, precision, peak_size) for precision in ("fp32", "bf16", "fp16")}
    flops = flops_per_sample(device, model_options)
    auto = choose_precision(device, "auto")
    pairs = tuple((ours, theirs) for ours, theirs in PAIRS if theirs in args.pairs)
    ours_precisions = tuple(ours for ours, _ in pairs if ours is not None)
    theirs_precisions = tuple(theirs for _, theirs in pairs)
    ours_rates: dict[str, list[list[float]]] = {precision: [] for precision in ours_precisions}
    theirs_rates: dict[str, list[list[float]]] = {precision: [] for precision in theirs_precisions}
    for round_index in range(args.runs):
        for pair_index, (ours_precision, theirs_precision) in enumerate(pairs):
            sides = []
            if ours_precision is not None:
                sides.append(lambda p=ours_precision: ours_rates[p].append(
                    run_ours(ours_csv, args.folder, model_options, p, args.steps, device, args.channels_last, args.compile)))
            sides.append(lambda p=theirs_precision: theirs_rates[p].append(
                run_open_clip(open_clip_csv, args.folder, open_clip_model, p, args.steps, args.n // BATCH, args.workers, device)))
            if (round_index + pair_index) % 2:  # alternate which side goes first
                sides.reverse()
            for side in sides:
                side()
    ours = {precision: side_summary(ours_rates[precision], args.warmup, precision, flops, peaks) for precision in ours_precisions}
    theirs = {precision: side_summary(theirs_rates[precision], args.warmup, OPEN_CLIP_DTYPE[precision], flops, peaks)
              for precision in theirs_precisions}
    rows: dict[str, Any] = {}
    for name, ours_precision, theirs_precision in ROWS:
        wanted = auto.name if ours_precision == "auto" else ours_precision
        if wanted not in ours or theirs_precision not in theirs:  # a pair left out with --pairs
            rows[name] = {"skipped": f"not run (--pairs {' '.join(args.pairs)})", "ratio": None}
            continue
        ours_side = dict(ours[wanted], requested=ours_precision)
        theirs_side = dict(theirs[theirs_precision], open_clip_precision=theirs_precision)
        rows[name] = {"ours": ours_side, "open_clip": theirs_side, "ratio": ours_side["samples_per_s"] / theirs_side["samples_per_s"]}
    fp32 = rows["fp32"]
    if "ours" not in fp32:
        raise SystemExit("--pairs must include fp32: the summary keys are the fp32 row's")
    return {
        "ours_samples_per_s": fp32["ours"]["samples_per_s"], "open_clip_samples_per_s": fp32["open_clip"]["samples_per_s"],
        "ratio": fp32["ratio"], "ours_mfu": fp32["ours"]["mfu"], "open_clip_mfu": fp32["open_clip"]["mfu"],
        "context_length": CONTEXT_LENGTH, "fp32_ratio": fp32["ratio"], "bf16_ratio": rows["bf16"]["ratio"],
        "auto_vs_open_clip_fp32_ratio": rows["auto_vs_open_clip_fp32"]["ratio"],
        "auto_vs_open_clip_default_ratio": rows["auto_vs_open_clip_default"]["ratio"],
        "auto_precision": auto.as_dict(), "rows": rows,
        "flops_per_sample_gflop": flops / 1e9, "matmul_peak_gflops": {precision: peak / 1e9 for precision, peak in peaks.items()},
        "settings": {"model": "tiny two-layer CLIP (--tiny)" if args.tiny else "ViT-S-32 (open_clip text tower)",
                     "batch_size": BATCH, "context_length": CONTEXT_LENGTH, "images": args.n, "steps": args.steps,
                     "warmup_steps_dropped": args.warmup, "runs": args.runs, "open_clip_workers": args.workers,
                     "ours_channels_last": args.channels_last, "ours_compile": args.compile, "tiny": args.tiny,
                     "open_clip_precisions_run": list(args.pairs)},
        "device": str(device), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
    }


SUMMARY_KEYS = ("ours_samples_per_s", "open_clip_samples_per_s", "ratio", "ours_mfu", "open_clip_mfu", "context_length",
                "fp32_ratio", "bf16_ratio", "auto_vs_open_clip_fp32_ratio", "auto_vs_open_clip_default_ratio")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="chest phantoms (all used for training)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3, help="runs of each side and precision, alternating")
    parser.add_argument("--workers", type=int, default=1, help="open_clip data-loader workers")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile our image tower")
    parser.add_argument("--tiny", action="store_true", help="a two-layer model, 64 images, 4 steps, one run each: checks the script")
    parser.add_argument("--pairs", nargs="+", default=[theirs for _, theirs in PAIRS], choices=[theirs for _, theirs in PAIRS],
                        help="open_clip precisions to run, each against ours (default all); on a CPU without native bf16/fp16 "
                             "the amp_bf16 and amp runs are emulated and take hours: --pairs fp32 gives the fp32 row (and "
                             "`auto` where it picks fp32)")
    parser.add_argument("--folder", type=Path, default=REPO_ROOT / "runs" / "bench-pretrain-vs-open-clip")
    parser.add_argument("--out", type=Path, default=None, help=f"the JSON (default {RESULTS.relative_to(REPO_ROOT)}; --tiny: in --folder)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.n, args.steps, args.warmup, args.runs, args.workers = 64, 4, 1, 1, 0
    out = args.out or (args.folder / "pretrain_vs_open_clip_tiny.json" if args.tiny else RESULTS)
    device = select_device("auto")
    create_plugin_manager()  # fills the model registry with the plugins' presets
    args.folder.mkdir(parents=True, exist_ok=True)
    result = measure(args, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    key = "cuda" if device.type == "cuda" else "cpu"
    existing = json.loads(out.read_text()) if out.exists() else {}
    existing[key] = result
    if key == "cpu":
        existing.update({name: result[name] for name in SUMMARY_KEYS})
    out.write_text(json.dumps(existing, indent=2) + "\n")
    print(json.dumps({name: result[name] for name in SUMMARY_KEYS}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
