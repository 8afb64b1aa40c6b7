"""Where a benchmark figure came from: commit, configs, data, models, splits, machine and seconds, in one record.

Every benchmark in ``benchmarks/`` builds one :class:`Provenance` when it starts, tells it each config it read,
each data set it used and each model it trained, and writes its results through :meth:`Provenance.write`, which adds
the record under ``"provenance"`` (with ``"selection"`` and ``"scored_split"`` beside the figures) and writes the JSON
atomically. A reader of ``benchmarks/results/NAME.json`` can then rerun exactly what produced it, and see when a
figure no longer matches the code or the configs.
"""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from workbench.errors import ConfigError
from workbench.fsutil import atomic_write_json, sha256_of_file

REPO_ROOT = Path(__file__).resolve().parents[1]
PHANTOM_SOURCES = ("phantoms.py", "phantoms_cxr.py", "phantoms_fundus.py", "phantoms_io.py", "phantoms_report.py")
PROVENANCE_KEYS = ("benchmark", "tiny", "command", "git", "configs", "data", "models", "splits", "machine", "threads",
                   "started", "finished", "wall_seconds", "cpu_seconds")


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it (``commit`` is ``None`` outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True,
                                 timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(changes.strip())}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: str | None = None) -> dict[str, Any]:
    """CPU model, cores (all and usable by this process), Python, torch, and the device the jobs ran on."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if device is None:
        device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return {"cpu_model": cpu_model(), "cpu_cores": os.cpu_count(), "cpu_cores_usable": usable, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "device": device}


def thread_info() -> dict[str, Any]:
    """torch's intra-op threads and the thread variables of the environment."""
    import torch

    return {"torch_threads": torch.get_num_threads(),
            **{name.lower(): os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}


def phantom_generator_sha256() -> str:
    """sha256 over the phantom generator's sources: the version of what ``(seed, index)`` draws."""
    digest = hashlib.sha256()
    for name in PHANTOM_SOURCES:
        path = REPO_ROOT / "workbench" / "data" / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return digest.hexdigest()


def phantom_digest(kind: str, n: int, seed: int, size: int) -> dict[str, Any]:
    """The digest of a phantom data set: its generator's version, seed, count and size fix every pixel."""
    from workbench import __version__

    return {"kind": kind, "n": int(n), "seed": int(seed), "size": int(size), "generator": "workbench.data.phantoms",
            "generator_sha256": phantom_generator_sha256(), "workbench_version": __version__}


def folder_digest(folder: str | Path) -> dict[str, Any]:
    """The digest of a real data folder: sha256 over its sorted ``relative path<TAB>size`` lines, and the file count.

    Raises:
        ConfigError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a data folder (a benchmark's real data must be a directory)")
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    listing = "".join(f"{path.relative_to(folder).as_posix()}\t{path.stat().st_size}\n" for path in files)
    return {"kind": "folder", "folder": _shown(folder), "files": len(files), "listing_sha256": hashlib.sha256(listing.encode()).hexdigest()}


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (no machine path in a committed JSON), else its name's tail."""
    resolved = Path(path).resolve()
    if resolved.is_relative_to(REPO_ROOT):
        return resolved.relative_to(REPO_ROOT).as_posix()
    if resolved.is_relative_to(REPO_ROOT.parent):
        return "../" + resolved.relative_to(REPO_ROOT.parent).as_posix()
    return resolved.name


def portable(value: Any) -> Any:
    """``value`` (nested dicts, lists, strings) with machine paths written relative to the repository.

    A benchmark records the overrides it passed its jobs, and those name its work folders by absolute path; a
    committed JSON must hold no machine path. Inside strings, the repository's folder becomes relative (``runs/...``),
    the shared data folder (``$WORKBENCH_SHARED_DATA``) ``../shared/data`` and the repository's parent ``../``.
    """
    if isinstance(value, Mapping):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(item) for item in value]
    if not isinstance(value, str):
        return value
    shared = os.environ.get("WORKBENCH_SHARED_DATA")
    prefixes = [(f"{REPO_ROOT}/", ""), *([(f"{Path(shared).resolve()}/", "../shared/data/")] if shared else []), (f"{REPO_ROOT.parent}/", "../")]
    for prefix, replacement in prefixes:
        value = value.replace(prefix, replacement)
    return value


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Provenance:
    """Collects a benchmark's provenance while it runs and writes its results JSON with it.

    Args:
        benchmark: the benchmark's name.
        tiny: a smoke-sized run (its figures mean nothing).
        device: the device the jobs run on (default: CUDA when present, else CPU).

    Example:
        >>> record = Provenance("grounding_phantom")
        >>> config = record.config("configs/ground_phantom.yaml")
        >>> record.model("encoder", "contrastive-phantom:v1", store)
        >>> record.write(out_path, {"pointing": 0.7}, scored_split="test", selection=selection)
    """

    def __init__(self, benchmark: str, *, tiny: bool = False, device: str | None = None):
        self.benchmark = benchmark
        self.tiny = tiny
        self.device = device
        self.configs: list[dict[str, Any]] = []
        self.data: list[dict[str, Any]] = []
        self.models: list[dict[str, Any]] = []
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._wall = time.perf_counter()
        self._cpu = _cpu_seconds()

    def config(self, path: str | Path) -> Path:
        """Record a config file (repository path and sha256); returns its absolute path.

        Raises:
            ConfigError: the file does not exist.
        """
        path = Path(path)
        path = path if path.is_absolute() else REPO_ROOT / path
        if not path.is_file():
            raise ConfigError(f"{path}: benchmark config not found")
        entry = {"path": _shown(path), "sha256": sha256_of_file(path)}
        if entry not in self.configs:
            self.configs.append(entry)
        return path

    def phantoms(self, kind: str, n: int, seed: int, size: int, used_for: str = "") -> dict[str, Any]:
        """Record a phantom data set (see :func:`phantom_digest`); returns the digest."""
        digest = dict(phantom_digest(kind, n, seed, size), used_for=used_for)
        self.data.append(digest)
        return digest

    def folder(self, folder: str | Path, used_for: str = "") -> dict[str, Any]:
        """Record a real data folder (see :func:`folder_digest`); returns the digest."""
        digest = dict(folder_digest(folder), used_for=used_for)
        self.data.append(digest)
        return digest

    def model(self, role: str, reference: str, store: str | Path | None, trained_here: bool = True) -> dict[str, Any]:
        """Record a model the benchmark used: its ``name:vN``, the sha256 of its ``model.safetensors``, who trained it.

        Args:
            role: what the benchmark used it for (``"encoder"``, ``"classifier"`` ...).
            reference: ``name[:version]`` in ``store``.
            store: the model store folder (``None``: the default store).
            trained_here: ``False`` when the user passed a stored model instead of letting the benchmark train it.
        """
        from workbench.model_records import parse_ref
        from workbench.model_store import ModelStore

        record = ModelStore(store).resolve(*parse_ref(reference))
        entry = {"role": role, "name": record.ref, "sha256": record.sha256, "trained_by_benchmark": trained_here}
        self.models.append(entry)
        return entry

    def record(self, *, scored_split: str | None, selection_split: str | None, command: str | None = None) -> dict[str, Any]:
        """The provenance record as of now (the clocks stop here)."""
        return {
            "benchmark": self.benchmark, "tiny": self.tiny,
            "command": command or " ".join(["workbench bench", self.benchmark, *(["--tiny"] if self.tiny else [])]),
            "git": git_state(), "configs": self.configs, "data": self.data, "models": self.models,
            "splits": {"selection": selection_split, "scored": scored_split},
            "machine": machine_info(self.device), "threads": thread_info(),
            "started": self.started, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_seconds": round(time.perf_counter() - self._wall, 2), "cpu_seconds": round(_cpu_seconds() - self._cpu, 2),
        }

    def write(self, out_path: str | Path, results: Mapping[str, Any], *, scored_split: str | None,
              selection: Mapping[str, Any] | None = None, command: str | None = None) -> dict[str, Any]:
        """Write ``results`` with ``selection``, ``scored_split`` and ``provenance`` to ``out_path`` atomically.

        Args:
            out_path: the results JSON.
            results: the benchmark's figures (must not use the three keys added here).
            scored_split: the split the figures were measured on (``None`` for a speed benchmark with no split).
            selection: a :class:`~workbench.selection.Selection` record (``None``: nothing was tuned).
            command: how it was run (default ``workbench bench NAME``).

        Returns:
            The payload written.

        Raises:
            ValueError: ``results`` already holds one of the added keys.
        """
        clash = {"provenance", "selection", "scored_split"} & set(results)
        if clash:
            raise ValueError(f"results of {self.benchmark} already hold {sorted(clash)}; those keys are the provenance's")
        selection_split = selection.get("split") if selection else None
        payload = {**portable(results), "selection": portable(dict(selection)) if selection else None, "scored_split": scored_split,
                   "provenance": self.record(scored_split=scored_split, selection_split=selection_split, command=command)}
        atomic_write_json(out_path, payload)
        print(f"{self.benchmark}: wrote {out_path}", file=sys.stderr)
        return payload
