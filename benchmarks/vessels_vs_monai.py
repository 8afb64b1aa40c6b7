"""Our vessel training loop and sliding-window prediction against plain MONAI, same network, data and maths.

Run: ``workbench bench vessels_vs_monai [--tiny]`` (or ``.venv/bin/python benchmarks/vessels_vs_monai.py [--batch 8]
[--size 96] [--steps 10] [--rounds 10] [--device auto] [--tiny]``).

Training: ``--batches`` fixed batches of ``--batch`` fundus-phantom patches (``--size`` px, RGB) and their labels, the
same ``vessel-unet`` (a MONAI ``UNet``) from the same initial weights, MONAI's ``DiceCELoss`` (sigmoid), AdamW built the
same way (fused, two parameter groups), constant learning rate. Two loops take turns, ``--steps`` optimizer steps each
per round, for ``--rounds`` rounds after one warm-up round:

- ``ours``: the workbench's shared :class:`~workbench.train.Trainer` running the vessels job's
  :class:`SegmentationStep` (autocast, NaN/Inf guard with its one host sync per step, scheduler, logging; checkpoints
  and TensorBoard off: they are not the loop's cost and a plain loop has none);
- ``monai``: the loop a MONAI tutorial writes: ``zero_grad``, forward, ``DiceCELoss``, ``backward``, ``step``.

Prediction: one 565x584 fundus phantom (the DRIVE size) through the same weights, our
:func:`~workbench_plugins.vessels.inference.predict_probabilities` (no mirroring) against MONAI's
``sliding_window_inference`` followed by a sigmoid, same window, overlap, window batch and Gaussian blending; the two
take turns ``--rounds`` times.

Each is timed at fp32 and under bf16 autocast (on a CPU without native bf16 the bf16 rows run emulated kernels and
are slow on both sides: they say so in ``bf16_native``). Ratios are ours / MONAI in images per second (above 1: ours is
faster). Results: ``benchmarks/results/vessels_vs_monai.json`` with ``train_step_ratio`` and ``predict_ratio`` (fp32)
at the top level. ``--tiny``: 2 patches of 32 px, one step, one round, a 64 px image (a smoke test).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from monai.inferers import sliding_window_inference  # noqa: E402
from monai.losses import DiceCELoss  # noqa: E402

from benchmarks.vessel_loss_overhead import phantom_batch  # noqa: E402
from workbench.data.phantoms import make_fundus  # noqa: E402
from workbench.devices import autocast, choose_precision, describe, select_device  # noqa: E402
from workbench.distributed import DistributedContext  # noqa: E402
from workbench.provenance import Provenance  # noqa: E402
from workbench.registry import ModelRegistry, PluginModelRegistry  # noqa: E402
from workbench.train import Trainer, TrainSettings, build_optimizer  # noqa: E402
from workbench_plugins.vessels.inference import predict_probabilities  # noqa: E402
from workbench_plugins.vessels.jobs import SegmentationStep  # noqa: E402
from workbench_plugins.vessels.losses import build_vessel_loss  # noqa: E402
from workbench_plugins.vessels.models import register_vessel_models  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "vessels_vs_monai.json"
BENCHMARK = {"name": "vessels_vs_monai", "cpu_budget_minutes": 10, "configs": [],
             "measures": "images/s of our vessel training loop and sliding-window prediction against a plain MONAI loop "
                         "and MONAI's sliding_window_inference, fp32 and bf16"}
PREDICT_SHAPE = (584, 565)  # (H, W): the DRIVE size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _unet(device: torch.device) -> torch.nn.Module:
    registry = PluginModelRegistry(ModelRegistry(), "vessels")
    register_vessel_models(registry)
    torch.manual_seed(0)
    return registry.create_model("vessel-unet").to(device)


def ours_training(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], steps: int, precision: str,
                  device: torch.device) -> Callable[[], float]:
    """A closure running ``steps`` optimizer steps of the shared Trainer with the vessels job's step; returns seconds."""
    settings = TrainSettings(steps=steps, batch_size=batches[0]["image"].shape[0], lr=1e-3, schedule="constant",
                             log_every=max(1, steps), checkpoint_every=10**9)
    step_fn = SegmentationStep(build_vessel_loss("dice_ce"), wants_aux=False)
    optimizer = build_optimizer(model, settings)
    context = DistributedContext(device=device)

    def run_steps() -> float:
        trainer = Trainer(model, step_fn, batches, settings, context, precision=precision, optimizer=optimizer, progress=False)
        _sync(device)
        started = time.perf_counter()
        trainer.fit()
        _sync(device)
        return time.perf_counter() - started

    return run_steps


def monai_training(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], steps: int, precision: str,
                   device: torch.device) -> Callable[[], float]:
    """A closure running ``steps`` steps of a plain MONAI training loop (same loss, optimizer, autocast); returns seconds."""
    settings = TrainSettings(steps=steps, lr=1e-3)
    loss_function = DiceCELoss(sigmoid=True)
    optimizer = build_optimizer(model, settings)

    def run_steps() -> float:
        model.train()
        _sync(device)
        started = time.perf_counter()
        for index in range(steps):
            batch = batches[index % len(batches)]
            image, label = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, precision):
                loss = loss_function(model(image), label)
            loss.backward()
            optimizer.step()
        _sync(device)
        return time.perf_counter() - started

    return run_steps


def ours_prediction(model: torch.nn.Module, image: torch.Tensor, roi: int, precision: str, device: torch.device) -> Callable[[], float]:
    """A closure predicting ``image`` ``(3, H, W)`` with our sliding-window path; returns seconds."""
    def predict() -> float:
        _sync(device)
        started = time.perf_counter()
        with autocast(device, precision):
            predict_probabilities(model, image, roi, overlap=0.25, sw_batch_size=4, device=device, mode="gaussian")
        _sync(device)
        return time.perf_counter() - started

    return predict


def monai_prediction(model: torch.nn.Module, image: torch.Tensor, roi: int, precision: str, device: torch.device) -> Callable[[], float]:
    """A closure predicting ``image`` with MONAI's ``sliding_window_inference`` + sigmoid; returns seconds."""
    def predict() -> float:
        model.eval()
        _sync(device)
        started = time.perf_counter()
        with torch.inference_mode(), autocast(device, precision):
            logits = sliding_window_inference(image[None].to(device), (roi, roi), 4, model, overlap=0.25, mode="gaussian")
            torch.sigmoid(logits.float())
        _sync(device)
        return time.perf_counter() - started

    return predict


def alternate(closures: dict[str, Callable[[], float]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each closure per round, the closures taking turns, the first of them changing every round (so neither
    always runs on the other's warm caches); the first ``warmup`` rounds are dropped."""
    seconds: dict[str, list[float]] = {name: [] for name in closures}
    order = list(closures)
    for round_index in range(warmup + rounds):
        for name in order if round_index % 2 == 0 else order[::-1]:
            closure = closures[name]
            taken = closure()
            if round_index >= warmup:
                seconds[name].append(taken)
    return seconds


def images_per_second(seconds: list[float], images_per_round: int) -> dict[str, float]:
    """Median, lowest and highest images/s over the rounds."""
    rates = [images_per_round / value for value in seconds]
    return {"median": round(statistics.median(rates), 3), "min": round(min(rates), 3), "max": round(max(rates), 3)}


def compare(ours: Callable[[], float], theirs: Callable[[], float], rounds: int, images_per_round: int) -> dict[str, Any]:
    """Alternate the two closures; images/s of each and the ratio of the medians (ours / MONAI)."""
    seconds = alternate({"ours": ours, "monai": theirs}, rounds)
    rows = {name: images_per_second(values, images_per_round) for name, values in seconds.items()}
    rows["ratio"] = round(rows["ours"]["median"] / rows["monai"]["median"], 3)
    return rows


def run(out_path: Path, tiny: bool = False, *, batch_size: int = 8, size: int = 96, batches: int = 4, steps: int = 10,
        rounds: int = 10, bf16_rounds: int = 2, device: str = "auto", **_: object) -> dict[str, Any]:
    """Time both training loops and both prediction paths at fp32 and bf16; write ``out_path`` with its provenance."""
    predict_shape = PREDICT_SHAPE
    roi = 96
    if tiny:
        batch_size, size, batches, steps, rounds, bf16_rounds, predict_shape, roi = 2, 32, 1, 1, 1, 1, (64, 64), 32
    provenance = Provenance("vessels_vs_monai", tiny=tiny)
    device = select_device(device)
    provenance.device = describe(device)
    provenance.phantoms("phantom-fundus", batch_size * batches, 0, max(256, 2 * size), used_for="fixed training patches")
    data = [phantom_batch(batch_size, size, seed=index) for index in range(batches)]
    data = [{key: value.to(device) for key, value in batch.items()} for batch in data]
    phantom = make_fundus(0, seed=1, size=predict_shape[0])
    image = torch.from_numpy(phantom.image[:, : predict_shape[1]].transpose(2, 0, 1).copy()).float().div(255.0).to(device)
    provenance.phantoms("phantom-fundus", 1, 1, predict_shape[0], used_for=f"one {predict_shape[1]}x{predict_shape[0]} image predicted")

    auto = choose_precision(device, "auto")  # auto picks bf16 only where the hardware runs it natively
    results: dict[str, Any] = {
        "what": "images/s (median over alternating rounds, with min and max) of our vessel training loop vs a plain MONAI loop "
                "and of our sliding-window prediction vs MONAI's sliding_window_inference; ratio = ours / MONAI",
        "network": "vessel-unet (monai.networks.nets.UNet, channels 16-256)", "loss": "DiceCELoss(sigmoid=True)",
        "optimizer": "AdamW (fused), lr 1e-3, constant", "batch": [batch_size, 3, size, size], "batches": batches,
        "steps_per_round": steps, "rounds": rounds, "bf16_rounds": bf16_rounds,
        "predict": {"image_hw": list(predict_shape), "roi": roi, "overlap": 0.25, "sw_batch_size": 4, "mode": "gaussian"},
        "bf16_native": auto.name == "bf16", "auto_precision": auto.as_dict(),
    }
    initial = _unet(device).state_dict()
    for precision, precision_rounds in (("fp32", rounds), ("bf16", bf16_rounds)):
        if choose_precision(device, precision).name != precision:
            results[precision] = {"skipped": choose_precision(device, precision).reason}
            continue
        ours_model, monai_model = _unet(device), _unet(device)
        ours_model.load_state_dict(copy.deepcopy(initial))
        monai_model.load_state_dict(copy.deepcopy(initial))
        precision_steps = steps if precision == "fp32" else max(1, steps // 5)
        train = compare(ours_training(ours_model, data, precision_steps, precision, device),
                        monai_training(monai_model, data, precision_steps, precision, device),
                        precision_rounds, precision_steps * batch_size)
        train["steps_per_round"] = precision_steps
        predict = compare(ours_prediction(ours_model, image, roi, precision, device),
                          monai_prediction(ours_model, image, roi, precision, device), precision_rounds, 1)
        results[precision] = {"train": train, "predict": predict}
        print(f"{precision}: training images/s ours {train['ours']['median']} vs MONAI {train['monai']['median']} "
              f"(ratio {train['ratio']}); prediction images/s ours {predict['ours']['median']} vs MONAI "
              f"{predict['monai']['median']} (ratio {predict['ratio']})")
    results["train_step_ratio"] = results["fp32"]["train"]["ratio"]
    results["predict_ratio"] = results["fp32"]["predict"]["ratio"]
    results["targets"] = {"train_step_ratio": ">= 0.95", "predict_ratio": ">= 1.0"}
    provenance.write(out_path, results, scored_split="none (speed)")
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the JSON, print the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--bf16-rounds", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--tiny", action="store_true", help="2 patches of 32 px, one step, one round (a smoke test)")
    arguments = parser.parse_args(argv)
    return run(arguments.output, arguments.tiny, batch_size=arguments.batch, size=arguments.size, batches=arguments.batches,
               steps=arguments.steps, rounds=arguments.rounds, bf16_rounds=arguments.bf16_rounds, device=arguments.device)


if __name__ == "__main__":
    main()
