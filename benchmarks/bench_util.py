"""What the benchmark scripts share: the encoder they pretrain, tiny-mode settings, and running a job in its own process.

Each benchmark's ``run(out_path, tiny=False, *, work_dir, models, store)`` is called by ``workbench bench NAME``
(:mod:`workbench.bench`); the helpers here keep the benchmarks to their own measurements.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

PRETRAIN_CONFIG = "configs/pretrain_phantom.yaml"
# Tiny runs: 40 chest phantoms at 128 px hold 32 training, 4 validation and 4 test studies (the split is a hash of the index).
TINY_CXR = {"n": 40, "size": 128, "seed": 0}
TINY_ENCODER = ["model.options.image_size=64", "model.options.context_length=32"]
TINY_TRAIN = ["train.steps=2", "train.batch_size=8", "train.warmup_steps=1", "train.checkpoint_every=2", "train.log_every=1"]


def run_overrides(work_dir: Path, tiny: bool) -> list[str]:
    """Where a benchmark's jobs write (``work_dir/runs``), and the CPU for a tiny run."""
    return [f"run.output_root={work_dir / 'runs'}", *(["run.device=cpu"] if tiny else [])]


def tiny_cxr_data(work_dir: Path, options_key: str = "options") -> list[str]:
    """Overrides pointing a chest-phantom config at the tiny phantom set (``options_key``: ``options`` or ``phantoms``)."""
    options = ", ".join(f"{key}: {value}" for key, value in TINY_CXR.items())
    return [f"data.root={work_dir / 'data' / 'phantom-cxr-tiny'}", f"data.{options_key}={{{options}}}"]


def cxr_phantoms(settings_data: Any, options_key: str = "options") -> tuple[int, int, int]:
    """``(n, seed, size)`` of a chest-phantom data section (the builder's defaults where the config is silent)."""
    options = getattr(settings_data, options_key) or {}
    return int(options.get("n", 200)), int(options.get("seed", 0)), int(options.get("size", 256))


def pretrain_encoder(provenance: Any, work_dir: Path, store: Path, tiny: bool, models: dict[str, str],
                     name: str = "bench-encoder", extra: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """The encoder a benchmark grounds, reports or explains with: ``models["encoder"]``, else pretrained now.

    Pretrains from ``configs/pretrain_phantom.yaml`` in one go (no resume) into ``store`` and records the config, the
    phantoms and the stored model in ``provenance``. Its own held-out evaluation is switched off: the benchmark
    measures what it is for.

    Returns:
        ``(name:vN, {"steps", "wall_seconds"})``.
    """
    if "encoder" in models:
        provenance.model("encoder", models["encoder"], store, trained_here=False)
        return models["encoder"], {"steps": None, "wall_seconds": None}
    from workbench.config import load_settings
    from workbench.host import create_plugin_manager
    from workbench_plugins.contrastive.jobs.pretrain import run_pretrain
    from workbench_plugins.contrastive.settings import PretrainSettings

    config = provenance.config(PRETRAIN_CONFIG)
    overrides = [*run_overrides(work_dir, tiny), "run.name=bench-pretrain", f"save.name={name}", f"save.store={store}",
                 "eval.retrieval=false", "eval.zeroshot=false", "eval.linear_probe=false", "eval.examples=0"]
    if tiny:
        overrides += [*tiny_cxr_data(work_dir), *TINY_TRAIN, *TINY_ENCODER]
    settings = load_settings(PretrainSettings, config, [*overrides, *(extra or [])])
    provenance.phantoms("phantom-cxr", *cxr_phantoms(settings.data), used_for="pretraining")
    started = time.perf_counter()
    outcome = run_pretrain(settings, create_plugin_manager().datasets.builders, progress=False)
    if outcome.stored is None:
        raise RuntimeError("the pretraining run stored no encoder")
    provenance.model("encoder", outcome.stored, store)
    return outcome.stored, {"steps": outcome.steps, "wall_seconds": round(time.perf_counter() - started, 1)}


def run_workbench(arguments: list[str]) -> tuple[Path, float]:
    """Run ``workbench ARGS`` from the repository root in a fresh process (no state leaks between runs).

    Returns:
        ``(index.html path the job printed last, wall seconds)``.

    Raises:
        RuntimeError: the job failed (with the end of its stderr).
    """
    executable = Path(sys.executable).with_name("workbench")
    started = time.perf_counter()
    completed = subprocess.run([str(executable), *arguments], cwd=REPO_ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"workbench {' '.join(arguments)} failed:\n{completed.stderr[-4000:]}")
    return Path(completed.stdout.strip().splitlines()[-1]), elapsed
