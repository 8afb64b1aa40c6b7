"""Writes that run out of room, for the fault tests: ENOSPC at fsync, or the kernel's EFBIG from RLIMIT_FSIZE.

ENOSPC is injected where a real full disk often reports it, at the fsync that
flushes a file; EFBIG is the kernel's own, from a lowered soft ``RLIMIT_FSIZE``
(Python ignores SIGXFSZ, so the write fails instead of killing the process).
"""

from __future__ import annotations

import errno
import os
import resource
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def disk_full(kind: str, file_limit: int = 600) -> Iterator[None]:
    """Writes inside the block fail: ``enospc`` at fsync, ``efbig`` past ``file_limit`` bytes a file."""
    if kind == "efbig":
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        return
    real_fsync = os.fsync

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    os.fsync = no_space
    try:
        yield
    finally:
        os.fsync = real_fsync


# What the DiskFullError message says for each kind (a regular expression).
MESSAGES = {
    "enospc": r"no space left on device \(ENOSPC\) while writing about [\d.]+ KiB with [\d.]+ [KMGT]?i?B free; free at least",
    "efbig": r"file too large \(EFBIG: this process's file-size limit, ulimit -f, or the file system's\) while writing about",
}
