"""``torchrun`` data parallelism from the same config as a single-process run.

A job never asks whether it is distributed: it calls :func:`init_distributed`,
which reads the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) and gives back a :class:`DistributedContext`. Without those
variables the context is a world of one and every helper here is a no-op, so
``workbench pretrain --config X`` and ``torchrun --nproc_per_node 2 -m
workbench.cli pretrain --config X`` run the same code.

The backend follows the device: NCCL on CUDA, gloo on CPU (and MPS).
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from workbench.devices import select_device
from workbench.errors import ConfigError

__all__ = ["DistributedContext", "init_distributed", "wrap_ddp", "unwrap", "barrier", "all_ranks_true", "gather_bytes", "broadcast_text", "shutdown"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 in a single-process run).
        world_size: number of processes (1 in a single-process run).
        local_rank: rank on this node; picks ``cuda:<local_rank>``.
        device: the device this process computes on.
        backend: ``"gloo"``, ``"nccl"`` or ``None`` when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as error:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from error


def init_distributed(device: str = "auto", backend: str = "auto", timeout_s: float = 1800.0) -> DistributedContext:
    """Join the ``torchrun`` process group when there is one, and pick the device.

    Args:
        device: the requested device (``auto`` picks ``cuda:<local_rank>`` when CUDA exists).
        backend: ``auto`` (NCCL on CUDA, gloo otherwise), ``gloo`` or ``nccl``.
        timeout_s: collective timeout; a rank that dies makes the others fail after this.

    Returns:
        The process's :class:`DistributedContext`.

    Raises:
        ConfigError: NCCL requested without CUDA, or malformed torchrun variables.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    _env_int("RANK", 0)  # malformed RANK is refused here; the process group reads it itself
    local_rank = _env_int("LOCAL_RANK", 0)
    chosen_device = select_device(device, local_rank=local_rank if world_size > 1 else None)
    if world_size <= 1:
        return DistributedContext(device=chosen_device)
    if backend == "auto":
        backend = "nccl" if chosen_device.type == "cuda" else "gloo"
    if backend == "nccl" and chosen_device.type != "cuda":
        raise ConfigError("backend 'nccl' needs CUDA devices; use 'gloo' on CPU")
    if chosen_device.type == "cuda":
        torch.cuda.set_device(chosen_device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=timeout_s))
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=chosen_device, backend=backend)


def wrap_ddp(model: nn.Module, context: DistributedContext, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap ``model`` (already on ``context.device``) in ``DistributedDataParallel`` when distributed.

    DDP broadcasts rank 0's parameters and buffers at construction, so every
    rank starts from the same weights, and averages gradients in ``backward``.

    Returns:
        The DDP module, or ``model`` itself in a world of one.
    """
    if not context.enabled:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def barrier(context: DistributedContext) -> None:
    """Wait for every rank (no-op in a world of one)."""
    if context.enabled:
        dist.barrier()


def all_ranks_true(flag: bool, context: DistributedContext) -> bool:
    """True when ``flag`` is true on every rank (a MIN all-reduce of one integer)."""
    if not context.enabled:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int64, device=context.device if context.backend == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def gather_bytes(payload: bytes, context: DistributedContext) -> list[bytes] | None:
    """Collect one byte string from every rank on rank 0.

    Used for per-rank random states in checkpoints: byte tensors travel through
    the collective, so nothing is pickled.

    Args:
        payload: this rank's bytes.
        context: the process group.

    Returns:
        On rank 0 the list of every rank's bytes (index = rank); ``None`` elsewhere.
        In a world of one, ``[payload]``.
    """
    if not context.enabled:
        return [payload]
    device = context.device if context.backend == "nccl" else torch.device("cpu")
    length = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    lengths = [torch.zeros_like(length) for _ in range(context.world_size)]
    dist.all_gather(lengths, length)
    longest = int(max(int(item.item()) for item in lengths))
    buffer = torch.zeros(longest, dtype=torch.uint8, device=device)
    buffer[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    gathered = [torch.zeros_like(buffer) for _ in range(context.world_size)]
    dist.all_gather(gathered, buffer)
    if not context.is_main:
        return None
    return [bytes(item[: int(size.item())].cpu().numpy().tobytes()) for item, size in zip(gathered, lengths)]


def broadcast_text(text: str | None, context: DistributedContext) -> str:
    """Rank 0's ``text`` on every rank (e.g. the run folder it created); ``text`` itself in a world of one."""
    if not context.enabled:
        return text or ""
    device = context.device if context.backend == "nccl" else torch.device("cpu")
    payload = (text or "").encode("utf-8") if context.is_main else b""
    length = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    dist.broadcast(length, src=0)
    buffer = torch.zeros(int(length.item()), dtype=torch.uint8, device=device)
    if context.is_main and payload:
        buffer.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device))
    dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().numpy().tobytes()).decode("utf-8")


def shutdown(context: DistributedContext) -> None:
    """Leave the process group (no-op when not distributed)."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
