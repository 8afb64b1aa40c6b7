"""The on-disk item cache (``cache="disk"``): written so a killed job never leaves a file that is trusted.

MONAI's ``PersistentDataset`` saves each item into a temporary folder (usually
``/tmp``, often another file system) and ``shutil.move``\\s it into the cache,
which across file systems is a copy: a job killed mid-copy, or a disk that
filled, leaves a truncated ``<hash>.pt`` under its final name. On the next run
MONAI rebuilds it only when ``torch.load`` says "Invalid magic number"; a
truncated zip archive ("failed finding central directory") stops the job.

:class:`CheckedPersistentDataset` writes the item into the cache folder itself
under a temporary name, fsyncs it and renames it into place (the rename is the
completion marker: a ``<hash>.pt`` exists only once whole), removes the
temporary files a killed job left when it is built, and treats any cache file
that does not load as damaged: it is logged, deleted and rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import logging
import time
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from monai.data import PersistentDataset
from monai.utils import convert_to_tensor

from workbench.fsutil import atomic_path, torch_save_file

__all__ = ["CheckedPersistentDataset", "STALE_TEMP_S"]

logger = logging.getLogger("workbench.data")

STALE_TEMP_S = 60.0  # a temporary file this old belongs to a dead writer, not to a job writing right now


class CheckedPersistentDataset(PersistentDataset):
    """MONAI ``PersistentDataset`` whose cache files are written atomically and rebuilt when unreadable.

    Args:
        args: as ``PersistentDataset`` (``data``, ``transform``, ``cache_dir``...).
        kwargs: as ``PersistentDataset``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rebuilt: list[Path] = []  # damaged cache files found (and replaced) by this process
        if self.cache_dir is not None:
            cutoff = time.time() - STALE_TEMP_S
            for stale in self.cache_dir.glob(".*.tmp"):
                with contextlib.suppress(FileNotFoundError):  # another process may remove it first
                    if stale.stat().st_mtime < cutoff:
                        logger.info("removing %s: a cache file a stopped job did not finish", stale)
                        stale.unlink()

    def _cachecheck(self, item_transformed: Any) -> Any:
        """The item's deterministic-transform output, from an intact cache file or computed and cached."""
        if self.cache_dir is None:
            return super()._cachecheck(item_transformed)
        hashfile = self.cache_dir / f"{self.hash_func(item_transformed).decode('utf-8')}{self.transform_hash}.pt"
        if hashfile.is_file():
            try:
                return torch.load(hashfile, weights_only=True)  # cache files hold tensors and plain data, never code
            except PermissionError:
                raise
            except Exception as error:  # truncated zip, bad pickle, bit rot: all mean "rebuild"
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                logger.warning("cache file %s is damaged (%s); rebuilding it", hashfile, reason)
                self.rebuilt.append(hashfile)
                hashfile.unlink(missing_ok=True)
        transformed = self._pre_transform(deepcopy(item_transformed))
        payload = convert_to_tensor(transformed, convert_numeric=False, track_meta=self.track_meta)
        try:
            with atomic_path(hashfile) as temporary:
                torch_save_file(payload, temporary)
        except FileNotFoundError:  # another job sharing this folder cleared our temporary file: serve uncached
            logger.warning("could not cache %s (its temporary file vanished); the item is used uncached", hashfile)
        return transformed
