"""Atomic file writes shared by the registry, checkpoints and run folders.

A write goes to a temporary file in the destination's directory, is flushed
and fsynced, then renamed over the destination: a reader sees the old file or
the new one, never half of one, and a crash leaves no partial file behind.

A write that runs out of room (``ENOSPC``, a quota's ``EDQUOT``, or ``EFBIG``
from a file-size limit) raises :class:`DiskFullError`: one line naming the file,
the bytes it was writing and the space free, after the partial file is gone.
safetensors and ``torch.save`` hide the ``OSError`` (a Rust message, an
"unexpected pos" assertion), so :func:`disk_full_errno` also reads the Rust
message and :class:`RecordingWriter` keeps the ``OSError`` a ``torch.save``
into it met.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from workbench.errors import WorkbenchError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_RUST_OS_ERROR = re.compile(r"os error (\d+)")


class DiskFullError(WorkbenchError):
    """A write ran out of room; the message names the file and the space needed.

    Attributes:
        path: the file or folder being written.
        bytes_to_write: the size of the write (an estimate for a checkpoint).
        free_bytes: the space free on that file system after the partial file was removed.
    """

    def __init__(self, path: str | Path, bytes_to_write: int, code: int):
        self.path, self.bytes_to_write, self.code = Path(path), int(bytes_to_write), code
        self.free_bytes = free_bytes(self.path)
        size = format_bytes(self.bytes_to_write)
        if code == errno.EFBIG:
            detail = (f"file too large (EFBIG: this process's file-size limit, ulimit -f, or the file system's) "
                      f"while writing about {size} with {format_bytes(self.free_bytes)} free; raise the limit")
        else:
            reason = "disk quota exceeded (EDQUOT)" if code == errno.EDQUOT else "no space left on device (ENOSPC)"
            short = max(self.bytes_to_write - self.free_bytes, 0)
            detail = (f"{reason} while writing about {size} with {format_bytes(self.free_bytes)} free; "
                      f"free at least {format_bytes(short + (1 << 20))}")  # 1 MiB of headroom for metadata and logs
        super().__init__(f"{self.path}: {detail}, then run the same command again "
                         "(the partial file was removed; what was written before is intact)")


def format_bytes(count: int) -> str:
    """``1536`` -> ``"1.5 KiB"``: a byte count people read at a glance."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover - the loop always returns


def free_bytes(path: str | Path) -> int:
    """Bytes free to this user on the file system holding ``path`` (or its nearest existing parent)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def disk_full_errno(error: BaseException) -> int | None:
    """The errno when ``error`` (or its cause/context) is a write that ran out of room, else ``None``.

    Reads ``OSError.errno``, an ``OSError`` a :class:`RecordingWriter` kept, the
    ``(os error 28)`` that safetensors' Rust writer puts in its message, and
    SQLite's "database or disk is full".
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DiskFullError):
            return current.code
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return current.errno
        if "database or disk is full" in str(current):  # sqlite3.OperationalError carries no errno
            return errno.ENOSPC
        match = _RUST_OS_ERROR.search(str(current))
        if match and int(match.group(1)) in DISK_FULL_ERRNOS:
            return int(match.group(1))
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def raise_disk_full(path: str | Path, bytes_to_write: int) -> Iterator[None]:
    """Turn a write error that means "out of room" into :class:`DiskFullError` naming ``path``.

    Clean up partial files before leaving the block (or in an inner ``finally``),
    so the free space reported is what the user really has.
    """
    try:
        yield
    except DiskFullError as error:
        if error.path == Path(path):
            raise
        # An inner write of a larger whole (a checkpoint's file): name the whole, which is what the user knows.
        raise DiskFullError(path, max(bytes_to_write, error.bytes_to_write), error.code) from error
    except Exception as error:
        code = disk_full_errno(error)
        if code is None:
            raise
        raise DiskFullError(path, bytes_to_write, code) from error


class RecordingWriter:
    """A binary file for ``torch.save`` that keeps the ``OSError`` a write met.

    ``torch.save`` reports a failed write as an opaque "unexpected pos"
    ``RuntimeError``; :meth:`check` re-raises the real cause after it.

    Args:
        handle: an unbuffered binary file (``open(path, "wb", buffering=0)``).
    """

    def __init__(self, handle: BinaryIO):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        """Write all of ``data`` (looping over short writes); record and re-raise an ``OSError``."""
        view = memoryview(data)
        try:
            while view:
                written = self.handle.write(view)
                view = view[written:]
        except OSError as error:
            self.error = error
            raise
        return len(data)

    def flush(self) -> None:
        """Flush the underlying file."""
        self.handle.flush()

    def check(self, error: BaseException) -> None:
        """After ``torch.save`` raised ``error``: raise the recorded disk-full cause, else ``error``."""
        if self.error is not None:
            raise self.error from error
        raise error


def torch_save_file(payload: Any, path: str | Path) -> int:
    """``torch.save(payload, path)`` whose out-of-room failure is an ``OSError`` one can recognise.

    Returns:
        The file's size in bytes.
    """
    import torch  # fsutil stays importable without torch for the light modules that use it

    with open(path, "wb", buffering=0) as handle:
        writer = RecordingWriter(handle)
        try:
            torch.save(payload, writer)
        except Exception as error:
            writer.check(error)
    return Path(path).stat().st_size


@contextmanager
def atomic_path(destination: str | Path, bytes_to_write: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; rename it over on success.

    Args:
        destination: the final file path. Its parent directory is created.
        bytes_to_write: the expected size, for the :class:`DiskFullError` message
            (default: what reached the temporary file before the failure).

    Yields:
        A path to write to. If the block raises, the temporary file is removed
        and ``destination`` is untouched.

    Raises:
        DiskFullError: the write, flush or rename ran out of room.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp_path: Path | None = None
    written = 0
    try:
        with raise_disk_full(destination, bytes_to_write or 0):
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
                    written = tmp_path.stat().st_size
                    tmp_path.unlink()
    except DiskFullError as error:
        if not bytes_to_write and written:
            raise DiskFullError(destination, written, error.code) from error.__cause__
        raise


def atomic_write_bytes(destination: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``destination`` atomically and return the path."""
    with atomic_path(destination, len(data)) as tmp:
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
