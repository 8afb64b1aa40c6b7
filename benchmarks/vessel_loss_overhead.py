"""Cost of a vessel training step per loss: Dice + CE vs Skeleton Recall vs soft-clDice vs the SCOPE graph head.

Run: ``workbench bench vessel_loss_overhead [--tiny]`` (or ``.venv/bin/python benchmarks/vessel_loss_overhead.py [--batch 8]
[--size 96] [--steps 20] [--warmup 3] [--device auto] [--tiny]``).

One batch of ``--batch`` fundus-phantom patches (``--size`` px, RGB, with vessels) and its labels; the
Skeleton Recall tube (skeleton dilated by a radius-1 disc, a 3x3 cross) is computed once beforehand, as the data pipeline
does. For each loss, one ``vessel-unet`` training step (forward, loss, backward, Adam step) on that same
batch; the graph loss runs on ``vessel-unet`` with the default graph head (so its time includes the head). The losses
take turns step by step, so load from other processes falls on all of them alike; after ``--warmup``
rounds, ``--steps`` rounds are timed and the median per loss is reported with its ratio to Dice + CE.
Also the loss alone (forward + backward on fixed logits) per loss: on a shared machine the step medians
move by more than a cheap loss adds, so the Skeleton Recall overhead is also given as the loss-alone
difference over the Dice + CE step.

Results go to ``benchmarks/results/vessel_loss_overhead.json``. Target: Skeleton Recall within 15 % of Dice + CE.
``--tiny``: a batch of 2 patches of 32 px, 2 timed rounds (a smoke test).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy.ndimage import binary_dilation
from skimage.morphology import disk, skeletonize

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from workbench.data.phantoms import make_fundus  # noqa: E402
from workbench.devices import describe, select_device  # noqa: E402
from workbench.provenance import Provenance  # noqa: E402
from workbench.registry import ModelRegistry, PluginModelRegistry  # noqa: E402
from workbench_plugins.vessels.losses import LOSS_NAMES, build_vessel_loss  # noqa: E402
from workbench_plugins.vessels.models import GRAPH_HEAD_DEFAULTS, register_vessel_models  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "vessel_loss_overhead.json"
BENCHMARK = {"name": "vessel_loss_overhead", "cpu_budget_minutes": 3, "configs": [],
             "measures": "ms per vessel-unet training step with Dice+CE, Skeleton Recall, soft-clDice and the graph head"}


def phantom_batch(batch: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``{"image" (B, 3, S, S) in [0, 1], "label" (B, 1, S, S), "tube" (B, 1, S, S)}`` from fundus phantoms."""
    rng = np.random.default_rng(seed)
    images, labels, tubes = [], [], []
    for index in range(batch):
        phantom = make_fundus(index, seed=seed, size=max(256, 2 * size))
        rows, cols = np.nonzero(phantom.vessels)
        pick = rng.integers(len(rows))
        top = int(np.clip(rows[pick] - size // 2, 0, phantom.vessels.shape[0] - size))
        left = int(np.clip(cols[pick] - size // 2, 0, phantom.vessels.shape[1] - size))
        window = (slice(top, top + size), slice(left, left + size))
        label = phantom.vessels[window]
        images.append(phantom.image[window].transpose(2, 0, 1).astype(np.float32) / 255.0)
        labels.append(label[None].astype(np.float32))
        tubes.append(binary_dilation(skeletonize(label), structure=disk(1))[None].astype(np.float32))
    return {"image": torch.from_numpy(np.stack(images)), "label": torch.from_numpy(np.stack(labels)),
            "tube": torch.from_numpy(np.stack(tubes))}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(model: torch.nn.Module, loss: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  batch: dict[str, torch.Tensor]) -> Callable[[], float]:
    """A closure running one training step and returning its seconds."""
    device = batch["image"].device

    def step() -> float:
        _sync(device)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        output = model(batch["image"], return_aux=True) if loss.requires_aux else model(batch["image"])
        loss(output, batch)["loss"].backward()
        optimizer.step()
        _sync(device)
        return time.perf_counter() - started

    return step


def loss_only_step(loss: torch.nn.Module, output: Any, batch: dict[str, torch.Tensor]) -> Callable[[], float]:
    """A closure timing the loss's forward and backward on fixed model outputs."""
    device = batch["image"].device

    def step() -> float:
        leaves = {key: value.detach().requires_grad_(True) for key, value in output.items()}
        _sync(device)
        started = time.perf_counter()
        loss(leaves if loss.requires_aux else leaves["logits"], batch)["loss"].backward()
        _sync(device)
        return time.perf_counter() - started

    return step


def interleaved_medians(steps: dict[str, Callable[[], float]], rounds: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median, quartiles (ms) per closure, the closures taking turns round by round."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(warmup + rounds):
        for name, step in steps.items():
            seconds = step()
            if round_index >= warmup:
                times[name].append(seconds * 1000.0)
    summary = {}
    for name, values in times.items():
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        summary[name] = {"median_ms": round(statistics.median(values), 2), "q1_ms": round(quartiles[0], 2),
                         "q3_ms": round(quartiles[2], 2)}
    return summary


def run(out_path: Path, tiny: bool = False, *, batch_size: int = 8, size: int = 96, steps_timed: int = 20, warmup: int = 3,
        device: str = "auto", **_: object) -> dict[str, Any]:
    """Time one training step per loss, write ``out_path`` with its provenance (nothing is stored: ``models`` go unused)."""
    if tiny:
        batch_size, size, steps_timed, warmup = 2, 32, 2, 1
    provenance = Provenance("vessel_loss_overhead", tiny=tiny)
    device = select_device(device)
    provenance.device = describe(device)
    provenance.phantoms("phantom-fundus", batch_size, 0, max(256, 2 * size), used_for="one batch of vessel patches")
    registry = PluginModelRegistry(ModelRegistry(), "vessels")
    register_vessel_models(registry)
    batch = {key: value.to(device) for key, value in phantom_batch(batch_size, size).items()}
    losses = {name: build_vessel_loss(name) for name in LOSS_NAMES}
    steps, loss_steps = {}, {}
    for name, loss in losses.items():
        torch.manual_seed(0)
        model = registry.create_model("vessel-unet", graph_head={} if loss.requires_aux else None).to(device).train()
        steps[name] = training_step(model, loss, torch.optim.Adam(model.parameters(), lr=1e-3), batch)
        with torch.no_grad():
            output = model(batch["image"], return_aux=True) if loss.requires_aux else {"logits": model(batch["image"])}
        loss_steps[name] = loss_only_step(loss, output, batch)
    step_times = interleaved_medians(steps, steps_timed, warmup)
    loss_times = interleaved_medians(loss_steps, steps_timed, warmup)
    baseline = step_times["dice_ce"]["median_ms"]
    results = {
        "what": "median ms of one vessel-unet training step (forward, loss, backward, Adam) per loss on the same batch; "
                "graph = vessel-unet with the graph head; loss_only = loss forward+backward on fixed logits",
        "batch": [batch_size, 3, size, size], "steps": steps_timed, "warmup": warmup,
        "graph_head": GRAPH_HEAD_DEFAULTS, "cldice_iterations": losses["cldice"].iterations,
        "training_step": {name: {**values, "ratio_to_dice_ce": round(values["median_ms"] / baseline, 3)}
                          for name, values in step_times.items()},
        "loss_only": loss_times,
        # The step medians carry the noise of a shared machine; the loss-alone difference is the part the loss adds.
        "skeleton_recall_overhead_from_loss_only": {
            "extra_ms": round(loss_times["skeleton_recall"]["median_ms"] - loss_times["dice_ce"]["median_ms"], 2),
            "ratio_to_dice_ce": round(1 + (loss_times["skeleton_recall"]["median_ms"] - loss_times["dice_ce"]["median_ms"])
                                      / baseline, 4),
        },
        "target": "skeleton_recall ratio_to_dice_ce <= 1.15",
        "skeleton_recall_within_target": step_times["skeleton_recall"]["median_ms"] / baseline <= 1.15,
    }
    provenance.write(out_path, results, scored_split=None)
    for name, values in results["training_step"].items():
        print(f"{name:>16}: {values['median_ms']:8.1f} ms/step  x{values['ratio_to_dice_ce']:.3f}  "
              f"(loss alone {loss_times[name]['median_ms']:.2f} ms)")
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=96, help="patch side, a multiple of 16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--tiny", action="store_true", help="2 patches of 32 px, 2 timed rounds (a smoke test)")
    args = parser.parse_args(argv)
    run(args.output, args.tiny, batch_size=args.batch, size=args.size, steps_timed=args.steps, warmup=args.warmup, device=args.device)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
