"""Weights files of the model store: safetensors written atomically, read only after a hash check.

safetensors holds tensors and a string header, nothing executable, so loading
a stored model never runs code from the file (unlike a pickled checkpoint).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping

import safetensors
import safetensors.torch
import torch
from torch import nn

from workbench.errors import IntegrityError, RegistryError
from workbench.fsutil import atomic_path, sha256_of_file


def state_for_saving(model: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict safetensors can write: CPU, contiguous, no two entries sharing storage.

    Tied weights (e.g. an embedding shared with an output head) appear under
    both names; the second is cloned so each name keeps its own copy, and
    loading with ``strict=True`` fills both names of the tied parameter.

    Args:
        model: a module or a state dict.

    Returns:
        Name -> tensor, in the state dict's order.

    Raises:
        RegistryError: an entry that is not a tensor (safetensors holds tensors only).
    """
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    seen_storages: set[tuple[str, int]] = set()
    prepared: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise RegistryError(f"state entry {key!r} is of type {type(value).__name__}; only tensors can be stored")
        tensor = value.detach()
        storage = (tensor.device.type, tensor.untyped_storage().data_ptr())
        if tensor.device.type != "cpu":
            tensor = tensor.to("cpu")  # already a private copy
        elif storage in seen_storages:
            tensor = tensor.clone()
        seen_storages.add(storage)
        prepared[key] = tensor.contiguous()
    return prepared


def write_weights(
    state: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None
) -> str:
    """Write ``state`` (from :func:`state_for_saving`) as safetensors, atomically.

    Args:
        state: name -> CPU tensor, none sharing storage.
        path: destination file.
        metadata: strings stored in the safetensors header.

    Returns:
        The hex sha256 of the written file.

    Raises:
        DiskFullError: the disk or a file-size limit ran out (no partial file is left).
    """
    header_allowance = 1024 + 128 * len(state)
    with atomic_path(path, sum(t.numel() * t.element_size() for t in state.values()) + header_allowance) as tmp:
        safetensors.torch.save_file(dict(state), str(tmp), metadata={"format": "pt", **(metadata or {})})
    return sha256_of_file(path)


def read_verified_weights(path: str | Path, expected_sha256: str, ref: str) -> dict[str, torch.Tensor]:
    """Read a safetensors file whose sha256 must equal ``expected_sha256``.

    The bytes are hashed and parsed from one read, so the tensors returned are
    exactly the bytes that were verified.

    Args:
        path: the ``model.safetensors`` file.
        expected_sha256: the hex digest recorded when it was saved.
        ref: ``"name:vN"``, for messages.

    Returns:
        Name -> CPU tensor.

    Raises:
        RegistryError: the file is missing (named).
        IntegrityError: the hash differs (file and both hashes named) or the file does not parse.
    """
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"{path}: weights of {ref} are missing from the store")
    payload = path.read_bytes()
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected_sha256:
        raise IntegrityError(
            f"{path}: sha256 {actual} does not match the recorded {expected_sha256}; "
            f"the weights of {ref} were modified or corrupted after saving and will not be loaded"
        )
    try:
        return safetensors.torch.load(payload)
    except safetensors.SafetensorError as error:
        raise IntegrityError(f"{path}: not a readable safetensors file: {error}") from error


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries to disk: a rename is durable only once its directory is."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
