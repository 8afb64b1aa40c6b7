"""Device, precision and memory-budget choice, made at run time.

Nothing in the workbench names a device literally: every job asks
:func:`select_device` and :func:`select_precision`, so the same config runs on
a laptop CPU, a GPU workstation and a cluster node.

Why precision is chosen from the hardware: a CPU without bf16 instructions runs
reduced-precision autocast emulated. On a 2-core AVX2 machine open_clip's
trainer with its default ``amp`` trains a ViT-S-32 at 0.1 samples/s versus
1.9 samples/s in fp32, and a bf16 matmul runs at 1/70 of the fp32 one. So
``auto`` picks bf16 only where the hardware has it: a CPU with AVX512-BF16 or
AMX-BF16 (and torch dispatching its AVX512 kernels), or an aarch64 CPU with the
``bf16`` extension; a CUDA device that supports bf16. fp16 is never chosen on a
CPU. :func:`choose_precision` returns the reason with the choice, for the run
log and ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager, Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def select_device(requested: str = "auto", local_rank: int | None = None) -> torch.device:
    """Pick the device to run on.

    Args:
        requested: ``"auto"`` (CUDA, else MPS, else CPU), or an explicit torch
            device string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
            ``WORKBENCH_DEVICE`` in the environment overrides ``"auto"``.
        local_rank: under torchrun, the process's local rank; with CUDA it picks
            ``cuda:<local_rank>``.

    Returns:
        The chosen ``torch.device``.

    Raises:
        ValueError: an explicit device that this machine does not have.
    """
    if requested == "auto":
        requested = os.environ.get("WORKBENCH_DEVICE", "auto")
    if requested == "auto":
        if torch.cuda.is_available():
            index = local_rank if local_rank is not None else 0
            return torch.device("cuda", index % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} was requested but CUDA is not available on this machine")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {requested!r} was requested but MPS is not available on this machine")
    return device


@dataclass(frozen=True)
class CpuCapabilities:
    """What decides whether a CPU runs bf16 natively.

    Attributes:
        isa: the kernels torch dispatches, ``torch.backends.cpu.get_cpu_capability()``
            (``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``, ``"SVE256"``...).
        flags: the CPU's feature flags (``/proc/cpuinfo`` ``flags`` on x86, ``Features`` on ARM).
        machine: ``platform.machine()`` (``"x86_64"``, ``"aarch64"``, ``"arm64"``).
    """

    isa: str
    flags: frozenset[str]
    machine: str


@dataclass(frozen=True)
class PrecisionChoice:
    """A precision and why it was picked.

    Attributes:
        name: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        reason: one sentence for the run log and ``metrics.json``.
    """

    name: Precision
    reason: str

    def as_dict(self) -> dict[str, str]:
        """``{"name": ..., "reason": ...}``, the ``precision`` entry of ``metrics.json``."""
        return {"name": self.name, "reason": self.reason}


_X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's feature flags; empty where ``/proc/cpuinfo`` does not exist (macOS, Windows)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> CpuCapabilities:
    """This machine's :class:`CpuCapabilities` (read once per process)."""
    return CpuCapabilities(isa=torch.backends.cpu.get_cpu_capability(), flags=_cpu_flags(), machine=platform.machine().lower())


def cpu_bf16_support(capabilities: CpuCapabilities) -> tuple[bool, str]:
    """Whether a CPU runs bf16 autocast natively, and why.

    Args:
        capabilities: the CPU's ISA and flags (:func:`cpu_capabilities`, or fake ones in tests).

    Returns:
        ``(native, reason)``. x86 needs a bf16 instruction set (AVX512-BF16 or AMX-BF16)
        and torch dispatching its AVX512 kernels (elementwise ops under autocast use
        them); aarch64 needs the ``bf16`` extension.
    """
    if capabilities.machine in ("aarch64", "arm64"):
        if "bf16" in capabilities.flags:
            return True, "the ARM CPU has the bf16 extension"
        return False, "the ARM CPU lacks the bf16 extension (bf16 would be emulated)"
    present = [flag for flag in _X86_BF16_FLAGS if flag in capabilities.flags]
    if not present:
        return False, f"the CPU has no AVX512-BF16 or AMX-BF16 (torch ISA {capabilities.isa}); bf16 would be emulated"
    if not capabilities.isa.upper().startswith("AVX512"):
        return False, f"the CPU has {'/'.join(present)} but torch dispatches {capabilities.isa} kernels (ATEN_CPU_CAPABILITY?)"
    return True, f"the CPU runs bf16 natively ({'/'.join(present)}, torch ISA {capabilities.isa})"


def choose_precision(device: torch.device, requested: str = "auto", *, cpu: CpuCapabilities | None = None,
                     cuda_bf16: bool | None = None) -> PrecisionChoice:
    """Pick the autocast precision for ``device``, with the reason.

    ``auto``: bf16 on a CPU that runs it natively (:func:`cpu_bf16_support`), else fp32;
    on CUDA bf16 where the device supports it, else fp16 (with loss scaling); on MPS
    fp16. ``WORKBENCH_PRECISION`` in the environment overrides ``auto`` (tests,
    quick comparisons). An explicit request wins, except fp16 on a CPU, which runs
    emulated and has no loss scaler there: it falls back to fp32, and the reason says so.

    Args:
        device: where the work runs.
        requested: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        cpu: the CPU's capabilities; default this machine's.
        cuda_bf16: whether the CUDA device supports bf16; default asked of torch.

    Returns:
        The :class:`PrecisionChoice`.

    Raises:
        ValueError: an unknown precision name (in ``requested`` or ``WORKBENCH_PRECISION``).
    """
    source = "requested"
    if requested == "auto" and os.environ.get("WORKBENCH_PRECISION", "auto") != "auto":
        requested, source = os.environ["WORKBENCH_PRECISION"], "set by WORKBENCH_PRECISION"
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        if requested == "fp16" and device.type == "cpu":
            return PrecisionChoice("fp32", f"fp16 was {source}, but a CPU runs it emulated and without loss scaling: fp32")
        return PrecisionChoice(requested, f"{requested} was {source}")  # type: ignore[arg-type]
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        if supported:
            return PrecisionChoice("bf16", "auto: the CUDA device supports bf16")
        return PrecisionChoice("fp16", "auto: the CUDA device lacks bf16; fp16 with loss scaling")
    if device.type == "mps":
        return PrecisionChoice("fp16", "auto: MPS runs fp16 natively")
    if device.type == "cpu":
        native, why = cpu_bf16_support(cpu if cpu is not None else cpu_capabilities())
        return PrecisionChoice("bf16" if native else "fp32", f"auto: {why}")
    return PrecisionChoice("fp32", f"auto: no reduced precision known for {device.type} devices")


def select_precision(device: torch.device, requested: str = "auto") -> Precision:
    """The name of :func:`choose_precision`'s choice for ``device`` (``fp32``/``bf16``/``fp16``).

    Raises:
        ValueError: an unknown precision name.
    """
    return choose_precision(device, requested).name


def placement_precision(device: torch.device, requested: str = "auto") -> Precision:
    """The dtype to cast a stored model's weights to for inference on ``device``.

    Unlike autocast, a cast keeps no fp32 reductions and hands bf16 tensors to code
    that calls ``.numpy()``; so ``auto`` keeps fp32 weights on a CPU even where
    bf16 autocast is native. Elsewhere as :func:`select_precision`.
    """
    if device.type == "cpu" and requested == "auto":
        return "fp32"
    return select_precision(device, requested)


def torch_dtype(precision: str) -> torch.dtype:
    """Return the ``torch.dtype`` for a precision name (``fp32``/``bf16``/``fp16``)."""
    return _DTYPES[precision]


def autocast(device: torch.device, precision: str) -> ContextManager:
    """Return an autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch_dtype(precision))


def needs_grad_scaler(device: torch.device, precision: str) -> bool:
    """True where fp16 training needs loss scaling (fp16 on CUDA)."""
    return precision == "fp16" and device.type == "cuda"


def memory_budget_bytes(device: torch.device, fraction: float = 0.8, explicit_bytes: int | None = None) -> int | None:
    """The memory budget for models held on ``device``.

    Args:
        device: the device models are placed on.
        fraction: share of the device's total memory to allow (CUDA only).
        explicit_bytes: a budget set in config; wins when given.

    Returns:
        Bytes, or ``None`` for no limit (CPU and MPS without an explicit budget).
    """
    if explicit_bytes is not None:
        return int(explicit_bytes)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return int(total * fraction)
    return None


def describe(device: torch.device) -> str:
    """A one-line description of ``device`` for logs (name and memory for CUDA)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{device} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    return f"{device} ({torch.get_num_threads()} threads)"
