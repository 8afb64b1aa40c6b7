"""Atomic file writes shared by the registry, checkpoints and run folders.

A write goes to a temporary file in the destination's directory, is flushed
and fsynced, then renamed over the destination: a reader sees the old file or
the new one, never half of one, and a crash leaves no partial file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(destination: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; rename it over on success.

    Args:
        destination: the final file path. Its parent directory is created.

    Yields:
        A path to write to. If the block raises, the temporary file is removed
        and ``destination`` is untouched.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, destination)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(destination: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``destination`` atomically and return the path."""
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)
    return Path(destination)


def atomic_write_text(destination: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``destination`` atomically and return the path."""
    return atomic_write_bytes(destination, text.encode("utf-8"))


def atomic_write_json(destination: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON to ``destination`` atomically."""
    return atomic_write_text(destination, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def sha256_of_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Return the hex sha256 digest of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
