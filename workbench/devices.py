"""Device, precision and memory-budget choice, made at run time.

Nothing in the workbench names a device literally: every job asks
:func:`select_device` and :func:`select_precision`, so the same config runs on
a laptop CPU, a GPU workstation and a cluster node.

Why precision is chosen from the hardware: a CPU runs fp16 autocast emulated.
On a 2-core x86 machine open_clip's trainer with its default ``amp`` trains a
ViT-S-32 at 0.1 samples/s versus 1.9 samples/s in fp32, so ``auto`` picks a
reduced precision only where the device runs it natively.
"""

from __future__ import annotations

import contextlib
import os
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


def select_precision(device: torch.device, requested: str = "auto") -> Precision:
    """Pick the compute precision for ``device``.

    Args:
        device: where the work runs.
        requested: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Returns:
        ``"fp32"`` on CPU for ``auto`` (reduced precision is emulated there);
        on CUDA ``"bf16"`` where supported, else ``"fp16"``; on MPS ``"fp16"``.
        An explicit request is returned as is.

    Raises:
        ValueError: an unknown precision name.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp16"
    return "fp32"


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
