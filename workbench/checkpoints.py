"""Training checkpoints that resume to the same result, and the random states inside them.

A checkpoint is a folder ``checkpoints/step-00000120/`` holding

- ``model.safetensors``: the trained module's parameters and buffers;
- ``state.pt``: optimizer, scheduler, grad scaler, step and data position,
  as tensors and plain values (read back with ``torch.load(weights_only=True)``);
- ``rng-rank<r>.safetensors``: each rank's Python, NumPy and torch (CPU and
  CUDA) random states, as tensors;
- ``package_refs.json`` (only for models declaring ``frozen_package_parts``): the
  tensors left out of ``model.safetensors`` because an installed package ships them
  unchanged (the frozen MiniLM tower), read back from the package on resume;
- ``checksums.json``: the sha256 of each file, verified on load.

The folder is written under a temporary name and renamed into place, then
``checkpoints/latest`` (a text file with the folder name) is replaced
atomically: a run killed at any moment leaves the previous checkpoint whole.
A write that runs out of disk removes its partial folder and raises
:class:`~workbench.fsutil.DiskFullError`; the previous checkpoints stay.
On resume :func:`resumable_checkpoint` verifies the newest checkpoint and,
when it is damaged (truncated, altered, a file missing), says so and falls
back to the newest intact one. Nothing is unpickled, so a checkpoint from
elsewhere cannot run code.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import safetensors.torch
import torch
from torch import nn

from workbench.errors import IntegrityError
from workbench.fsutil import atomic_write_json, atomic_write_text, raise_disk_full, sha256_of_file, torch_save_file
from workbench.package_weights import package_parts_of, package_tensors, split_package_state

__all__ = [
    "seed_everything", "capture_rng_state", "restore_rng_state", "rng_state_bytes", "rng_state_from_bytes",
    "save_checkpoint", "load_checkpoint", "latest_checkpoint", "resumable_checkpoint", "Checkpoint",
]

logger = logging.getLogger("workbench.checkpoints")

LATEST_POINTER = "latest"
# Frozen tensors an installed package ships unchanged (the MiniLM tower) are listed here instead of copied.
PACKAGE_REFS_FILE = "package_refs.json"
_STEP_PREFIX = "step-"


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, torch.Tensor]:
    """This process's random states as a dict of tensors (safe to store without pickle).

    Returns:
        ``torch_cpu`` (uint8), ``cuda_<i>`` (uint8, one per CUDA device), ``numpy_keys``
        (int64 (624,)), ``numpy_meta`` (float64: pos, has_gauss, cached_gaussian),
        ``python_state`` (int64 (626,): version and the Mersenne Twister words) and
        ``python_gauss`` (float64 (2,): present flag, value).
    """
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    version, words, gauss_next = random.getstate()
    state = {
        "torch_cpu": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
        "numpy_meta": torch.tensor([position, has_gauss, cached_gaussian], dtype=torch.float64),
        "python_state": torch.tensor([version, *words], dtype=torch.int64),
        "python_gauss": torch.tensor([0.0 if gauss_next is None else 1.0, gauss_next or 0.0], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda_{index}"] = cuda_state
    return state


def restore_rng_state(state: Mapping[str, torch.Tensor]) -> None:
    """Put back the states from :func:`capture_rng_state` (CUDA ones only where those devices exist)."""
    torch.set_rng_state(state["torch_cpu"].to(torch.uint8))
    meta = state["numpy_meta"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(meta[0]), int(meta[1]), float(meta[2])))
    python_words = state["python_state"].tolist()
    flag, value = state["python_gauss"].tolist()
    random.setstate((int(python_words[0]), tuple(int(word) for word in python_words[1:]), value if flag else None))
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            if f"cuda_{index}" in state:
                torch.cuda.set_rng_state(state[f"cuda_{index}"].to(torch.uint8), index)


def rng_state_bytes() -> bytes:
    """:func:`capture_rng_state` serialised as safetensors bytes (for gathering across ranks)."""
    return safetensors.torch.save({key: value.contiguous() for key, value in capture_rng_state().items()})


def rng_state_from_bytes(payload: bytes) -> dict[str, torch.Tensor]:
    """The inverse of :func:`rng_state_bytes`."""
    return safetensors.torch.load(payload)


class Checkpoint:
    """A checkpoint folder read back: its step, training state and random states.

    Attributes:
        path: the ``step-XXXXXXXX`` folder.
        state: the dict saved in ``state.pt`` (``step``, ``epoch``, ``batch_in_epoch``,
            ``optimizer``, ``scheduler``, ``scaler``, ``extra``).
    """

    def __init__(self, path: Path, state: dict[str, Any]):
        self.path = path
        self.state = state

    @property
    def step(self) -> int:
        """Optimizer steps taken when the checkpoint was written."""
        return int(self.state["step"])

    def rng_state(self, rank: int) -> dict[str, torch.Tensor] | None:
        """Rank ``rank``'s random states, or ``None`` when the checkpoint has none for it."""
        path = self.path / f"rng-rank{rank}.safetensors"
        return safetensors.torch.load_file(str(path)) if path.exists() else None

    def load_model(self, model: nn.Module, strict: bool = True) -> None:
        """Load ``model.safetensors`` into ``model`` (tied weights handled by safetensors), with the package tensors it references.

        Raises:
            IntegrityError: the file does not match the model (``strict``), or a referenced
                package's file changed since the checkpoint was written (package named).
            RegistryError: a referenced package is not installed (named).
        """
        refs_file = self.path / PACKAGE_REFS_FILE
        if refs_file.exists():
            state = safetensors.torch.load_file(str(self.path / "model.safetensors"))
            state.update(package_tensors(json.loads(refs_file.read_text(encoding="utf-8")), f"checkpoint {self.path}"))
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [key for key in missing if key not in _shared_names(model, set(state))]
        else:
            missing, unexpected = safetensors.torch.load_model(model, str(self.path / "model.safetensors"), strict=False)
        if strict and (missing or unexpected):
            raise IntegrityError(f"{self.path / 'model.safetensors'}: does not match the model "
                                 f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")


def save_checkpoint(
    folder: str | Path,
    model: nn.Module,
    state: Mapping[str, Any],
    rng_states: list[bytes],
    keep: int = 2,
    protected: Iterable[int] = (),
) -> Path:
    """Write a checkpoint folder atomically and point ``latest`` at it.

    Args:
        folder: the run's ``checkpoints`` folder.
        model: the unwrapped module to save.
        state: ``step`` (int) and anything ``torch.save`` can store that
            ``torch.load(weights_only=True)`` reads back (tensors, numbers, strings,
            lists, dicts), e.g. optimizer and scheduler state dicts.
        rng_states: per-rank random states from :func:`rng_state_bytes` (index = rank).
        keep: how many newest checkpoints to keep; older ones are removed.
        protected: steps whose checkpoints are never removed by ``keep`` (a job stores them later).

    Returns:
        The new checkpoint folder.

    Raises:
        DiskFullError: the disk (or a file-size limit) ran out; the partial folder
            is removed and the earlier checkpoints and ``latest`` are untouched.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    step = int(state["step"])
    name = f"{_STEP_PREFIX}{step:08d}"
    final = folder / name
    partial = folder / f".{name}.partial"
    for stale in folder.glob(f".{_STEP_PREFIX}*.partial"):  # left by a run killed mid-write; one writer per folder
        shutil.rmtree(stale, ignore_errors=True)
    with raise_disk_full(final, _checkpoint_bytes(model, state, rng_states)):
        try:
            _write_files(partial, model, state, rng_states)
        finally:
            shutil.rmtree(partial, ignore_errors=True)  # a no-op once renamed into place
        # Checkpoints past this step belong to a timeline abandoned on resume (their newer checkpoint was damaged).
        for later in _step_folders(folder):
            if _step_of(later) > step:
                shutil.rmtree(later, ignore_errors=True)
        atomic_write_text(folder / LATEST_POINTER, name + "\n")
    _prune(folder, keep, set(protected))
    return final


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    return 0


def _checkpoint_bytes(model: nn.Module, state: Mapping[str, Any], rng_states: list[bytes]) -> int:
    """About how many bytes a checkpoint takes: tensors plus 64 KiB of headers and pickling."""
    return _tensor_bytes(model.state_dict()) + _tensor_bytes(dict(state)) + sum(map(len, rng_states)) + (64 << 10)


def _write_files(partial: Path, model: nn.Module, state: Mapping[str, Any], rng_states: list[bytes]) -> None:
    """Write the checkpoint's files into ``partial``, checksum and fsync them, rename to the final name."""
    final = partial.parent / partial.name[1:].removesuffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    parts = package_parts_of(model)
    if parts:
        weights, references = split_package_state(_distinct_tensors(model), parts, f"checkpoint {final}")
        safetensors.torch.save_file(weights, str(partial / "model.safetensors"), metadata={"format": "pt"})
        if references:
            atomic_write_json(partial / PACKAGE_REFS_FILE, references)
    else:
        safetensors.torch.save_model(model, str(partial / "model.safetensors"))
    torch_save_file(dict(state), partial / "state.pt")
    for rank, payload in enumerate(rng_states):
        with open(partial / f"rng-rank{rank}.safetensors", "wb") as handle:
            handle.write(payload)
    checksums = {item.name: sha256_of_file(item) for item in sorted(partial.iterdir())}
    atomic_write_json(partial / "checksums.json", checksums)
    for item in partial.iterdir():
        with open(item, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)


def _tensor_place(tensor: torch.Tensor) -> tuple[Any, ...]:
    return (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))


def _distinct_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tied tensor once (under its first name), CPU and contiguous, as ``save_model`` writes it."""
    seen: set[tuple[Any, ...]] = set()
    storages: set[tuple[Any, int]] = set()
    distinct: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        place = _tensor_place(tensor)
        if place in seen:
            continue
        seen.add(place)
        tensor = tensor.detach()
        # A different view of a storage already written gets its own copy (safetensors refuses shared memory).
        distinct[key] = tensor.clone() if place[:2] in storages else tensor.cpu().contiguous()
        storages.add(place[:2])
    return distinct


def _shared_names(model: nn.Module, loaded: set[str]) -> set[str]:
    """Names of the model's state that share their tensor with a name in ``loaded`` (filled by loading that one)."""
    state = model.state_dict()
    loaded_places = {_tensor_place(state[key]) for key in loaded if key in state}
    return {key for key, tensor in state.items() if _tensor_place(tensor) in loaded_places}


def _step_of(path: Path) -> int:
    suffix = path.name[len(_STEP_PREFIX):]
    return int(suffix) if suffix.isdigit() else -1


def _step_folders(folder: Path) -> list[Path]:
    """``step-*`` folders, oldest first (by step number, not by name)."""
    return sorted((path for path in folder.glob(f"{_STEP_PREFIX}*") if path.is_dir() and _step_of(path) >= 0), key=_step_of)


def _prune(folder: Path, keep: int, protected: set[int]) -> None:
    steps = [path for path in _step_folders(folder) if _step_of(path) not in protected]
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoints_by_step(folder: str | Path) -> dict[int, Path]:
    """The ``step-*`` folders under ``folder`` by their step (``{}`` when there are none)."""
    return {_step_of(path): path for path in _step_folders(Path(folder))} if Path(folder).is_dir() else {}


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint in ``folder`` (``latest`` first, else the highest step), or ``None``."""
    folder = Path(folder)
    pointer = folder / LATEST_POINTER
    if pointer.exists():
        candidate = folder / pointer.read_text(encoding="utf-8").strip()
        if (candidate / "checksums.json").exists():
            return candidate
    complete = sorted(path for path in folder.glob(f"{_STEP_PREFIX}*") if (path / "checksums.json").exists())
    return complete[-1] if complete else None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint folder.

    Args:
        path: a ``step-XXXXXXXX`` folder.

    Returns:
        The :class:`Checkpoint`.

    Raises:
        IntegrityError: a missing or altered file, or a ``state.pt`` that is not
            plain data (naming the file and the problem).
    """
    path = Path(path)
    checksum_file = path / "checksums.json"
    if not checksum_file.exists():
        raise IntegrityError(f"{path}: not a complete checkpoint (no checksums.json)")
    try:
        checksums = json.loads(checksum_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise IntegrityError(f"{checksum_file}: unreadable ({error})") from error
    for name, expected in checksums.items():
        item = path / name
        if not item.exists():
            raise IntegrityError(f"{item}: missing from the checkpoint")
        if sha256_of_file(item) != expected:
            raise IntegrityError(f"{item}: sha256 does not match checksums.json (the file was altered or truncated)")
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError/RuntimeError variants for foreign or broken files
        raise IntegrityError(f"{path / 'state.pt'}: cannot be read as plain training state ({error})") from error
    return Checkpoint(path, state)


def resumable_checkpoint(folder: str | Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint in ``folder`` that verifies, and why each newer one was passed over.

    Every ``step-*`` folder is a candidate, newest step first (a folder is only
    renamed into place when complete, so one without ``checksums.json`` or with
    a file that fails its sha256 was damaged afterwards: a truncated copy, a
    disk error, a file deleted by hand).

    Args:
        folder: the run's ``checkpoints`` folder.

    Returns:
        ``(checkpoint or None, damaged)``: ``damaged`` holds one line per skipped
        checkpoint, naming the file and the problem. Each is also logged as a warning.
    """
    damaged: list[str] = []
    for candidate in reversed(_step_folders(Path(folder))):
        try:
            checkpoint = load_checkpoint(candidate)
        except IntegrityError as error:
            damaged.append(str(error))
            logger.warning("checkpoint %s is damaged and will not be resumed from: %s", candidate.name, error)
            continue
        return checkpoint, damaged
    return None, damaged
