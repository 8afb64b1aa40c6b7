"""Where a pretraining step's time goes, and how samples/s grows with the batch: batch 8, 32 and 128.

Run: ``workbench bench pretrain_step_profile [--tiny]`` (or ``.venv/bin/python benchmarks/pretrain_step_profile.py
[--steps 4] [--batches 8 32 128] [--tiny]``).

The model is the one ``benchmarks/pretrain_vs_open_clip.py`` compares (our preset ``dual-vit-s-32-openclip``: open_clip's
``ViT-S-32``, context length 77) with the CLIP objective and the shared trainer's AdamW, on random images and token
ids (the data path is timed by ``data_loading``; here only the step).

- ``profile``: one step at batch 32 under :mod:`torch.profiler` (after warm-up steps), every aten operator's self CPU
  time summed into categories: matrix products (``mm``, ``addmm``, ``bmm``, ``linear``, convolution), attention
  (SDPA kernels, softmax), GELU, layer norm, copies and layout (``copy_``, ``clone``, ``contiguous``, ``cat``...),
  fills, the loss (log-softmax, NLL), the optimizer (fused AdamW), element-wise rest. Shares of the step, with the
  twenty most expensive operators.
- ``batch_scaling``: samples/s of the whole step (forward, loss, backward, optimizer) at each ``--batches`` size, the
  median over ``--steps`` steps after two warm-up steps, and FLOPs per sample (``torch.utils.flop_counter``).

Results: ``benchmarks/results/pretrain_step_profile.json``. ``--tiny``: a two-layer model at 32 px, batches 2 and 4.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from workbench.devices import describe, select_device  # noqa: E402
from workbench.host import create_plugin_manager  # noqa: E402
from workbench.provenance import Provenance  # noqa: E402
from workbench.registry import create_model  # noqa: E402
from workbench.train import TrainSettings, build_optimizer  # noqa: E402
from workbench_plugins.contrastive.losses import build_objective  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "pretrain_step_profile.json"
BENCHMARK = {"name": "pretrain_step_profile", "cpu_budget_minutes": 15, "configs": [],
             "measures": "share of a ViT-S-32 CLIP training step per operator category; samples/s at batch 8, 32, 128"}
PRESET = "dual-vit-s-32-openclip"
CONTEXT_LENGTH = 77

# aten operator name -> category; the first matching rule wins (substring of the name after ``aten::``).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention", "softmax")),
    ("matmul", ("mm", "addmm", "bmm", "matmul", "linear", "convolution", "conv2d", "_convolution", "baddbmm")),
    ("gelu", ("gelu",)),
    ("layer_norm", ("layer_norm",)),
    ("loss", ("log_softmax", "nll_loss", "cross_entropy")),
    ("optimizer", ("adam", "_foreach", "lerp", "addcdiv", "addcmul")),
    ("copies_layout", ("copy_", "clone", "contiguous", "cat", "stack", "to", "_to_copy", "transpose", "permute", "view",
                       "reshape", "expand", "slice", "select", "split", "unbind", "t", "as_strided", "narrow")),
    ("fills", ("fill_", "zero_", "zeros", "ones", "empty", "full")),
    ("reductions", ("sum", "mean", "norm", "max", "min", "argmax")),
)


def categorise(operator: str) -> str:
    """The category of an aten operator name (``"elementwise_other"`` when no rule matches)."""
    name = operator.removeprefix("aten::").lstrip("_")
    base = name.split(".")[0]
    for category, keys in CATEGORIES:
        for key in keys:
            key = key.lstrip("_")
            if base == key or (len(key) > 3 and key in base):
                return category
    return "elementwise_other"


def build(device: torch.device, tiny: bool, batch: int) -> tuple[torch.nn.Module, Any, torch.optim.Optimizer, dict[str, torch.Tensor]]:
    """The model, its CLIP objective, the trainer's AdamW and one random batch of ``batch`` samples."""
    options: dict[str, Any] = {"pretrained_text": None, "context_length": CONTEXT_LENGTH}
    if tiny:  # the same two-layer config as pretrain_vs_open_clip --tiny, through open_clip's local-dir: schema
        import json
        import tempfile

        from benchmarks.pretrain_vs_open_clip import TINY_CONFIG

        folder = Path(tempfile.mkdtemp(prefix="tiny-tower-"))
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
        options["image_tower"] = f"local-dir:{folder}"
    torch.manual_seed(0)
    model = create_model(PRESET, **options).to(device).train()
    objective = build_objective("clip", model)
    optimizer = build_optimizer(model, TrainSettings(lr=5e-4))
    size = model.image_size
    data = {"images": torch.randn(batch, 3, size, size, device=device),
            "token_ids": torch.randint(1, 1000, (batch, model.context_length), device=device)}
    return model, objective, optimizer, data


def train_step(model: torch.nn.Module, objective: Any, optimizer: torch.optim.Optimizer, data: dict[str, torch.Tensor]) -> None:
    """Forward, CLIP loss, backward and one AdamW step (what the shared trainer does, without its bookkeeping)."""
    optimizer.zero_grad(set_to_none=True)
    objective(model, data)["loss"].backward()
    optimizer.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_step(device: torch.device, tiny: bool, batch: int) -> dict[str, Any]:
    """Self CPU time of every operator in one profiled step, by category (ms and share) and the top twenty operators."""
    from torch.profiler import ProfilerActivity, profile

    model, objective, optimizer, data = build(device, tiny, batch)
    for _ in range(2):
        train_step(model, objective, optimizer, data)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        train_step(model, objective, optimizer, data)
        _sync(device)
    by_category: dict[str, float] = defaultdict(float)
    operators = []
    for event in profiler.key_averages():
        if not event.key.startswith("aten::"):
            continue
        milliseconds = event.self_cpu_time_total / 1000.0
        by_category[categorise(event.key)] += milliseconds
        operators.append((milliseconds, event.key, event.count))
    total = sum(by_category.values()) or 1.0
    operators.sort(reverse=True)
    return {"batch": batch, "total_self_cpu_ms": round(total, 1),
            "categories": {name: {"ms": round(value, 1), "share": round(value / total, 4)}
                           for name, value in sorted(by_category.items(), key=lambda item: -item[1])},
            "top_operators": [{"operator": key, "ms": round(ms, 2), "calls": count, "category": categorise(key)}
                              for ms, key, count in operators[:20]]}


def batch_rate(device: torch.device, tiny: bool, batch: int, steps: int) -> dict[str, Any]:
    """Samples/s of the training step at ``batch`` (median over ``steps`` after two warm-up steps) and FLOPs per sample."""
    from torch.utils.flop_counter import FlopCounterMode

    model, objective, optimizer, data = build(device, tiny, batch)
    counter = FlopCounterMode(display=False)
    with counter:
        objective(model, data)["loss"].backward()
    optimizer.zero_grad(set_to_none=True)
    seconds = []
    for index in range(2 + steps):
        _sync(device)
        started = time.perf_counter()
        train_step(model, objective, optimizer, data)
        _sync(device)
        if index >= 2:
            seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    return {"batch": batch, "steps": steps, "median_step_s": round(median, 4), "samples_per_s": round(batch / median, 3),
            "min_step_s": round(min(seconds), 4), "max_step_s": round(max(seconds), 4),
            "gflop_per_sample": round(counter.get_total_flops() / batch / 1e9, 3),
            "achieved_gflops": round(counter.get_total_flops() / median / 1e9, 2)}


def run(out_path: Path, tiny: bool = False, *, steps: int = 4, batches: tuple[int, ...] = (8, 32, 128), device: str = "auto",
        **_: object) -> dict[str, Any]:
    """Profile one step at batch 32 and time every batch size; write ``out_path`` with its provenance."""
    if tiny:
        steps, batches = 1, (2, 4)
    provenance = Provenance("pretrain_step_profile", tiny=tiny)
    create_plugin_manager()  # fills the model registry with the plugins' presets
    device = select_device(device)
    provenance.device = describe(device)
    provenance.data.append({"kind": "random tensors", "seed": 0, "used_for": "images (3, 224, 224) and token ids (77)",
                            "generator_sha256": "torch.manual_seed(0)"})
    results: dict[str, Any] = {"model": "tiny two-layer CLIP" if tiny else f"{PRESET} (open_clip ViT-S-32)", "context_length": CONTEXT_LENGTH,
                               "precision": "fp32", "threads": torch.get_num_threads()}
    results["profile"] = profile_step(device, tiny, 4 if tiny else 32)
    results["batch_scaling"] = [batch_rate(device, tiny, batch, steps) for batch in batches]
    for row in results["batch_scaling"]:
        print(f"batch {row['batch']}: {row['samples_per_s']} samples/s ({row['achieved_gflops']} GFLOP/s)")
    shares = results["profile"]["categories"]
    print("step shares: " + ", ".join(f"{name} {value['share']:.1%}" for name, value in shares.items()))
    provenance.write(out_path, results, scored_split="none (speed)")
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the JSON, print the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--tiny", action="store_true", help="a two-layer model at 32 px, batches 2 and 4 (a smoke test)")
    arguments = parser.parse_args(argv)
    return run(arguments.output, arguments.tiny, steps=arguments.steps, batches=tuple(arguments.batches), device=arguments.device)


if __name__ == "__main__":
    main()
