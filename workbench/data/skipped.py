"""The record of skipped data: ``skipped.csv`` in the run folder, written as skips happen.

Loader workers are separate processes, so the CSV file (not an in-memory list)
is the shared truth when it is given: every row is appended under a file lock,
flushed and fsynced at once (a run that dies keeps every row already written),
and a skip already in the file is not written again, however many epochs or
workers meet the same bad record.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
from pathlib import Path
from typing import Any, Mapping

from filelock import FileLock

from workbench.errors import DataError

logger = logging.getLogger("workbench.data")

SKIPPED_HEADER = ("id", "file", "reason")


def skippable_error(error: BaseException, skip_on: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception along ``error``'s cause/context chain that is one of ``skip_on``.

    MONAI wraps a failing transform's error in ``RuntimeError("applying
    transform ...")``; the data error that says which file and why is inside.

    Args:
        error: the exception caught.
        skip_on: the exception types that mark a bad record.

    Returns:
        The matching exception, preferring a :class:`DataError`, or ``None``.
    """
    chain, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    matches = [item for item in chain if isinstance(item, skip_on)]
    data_errors = [item for item in matches if isinstance(item, DataError)]
    return (data_errors or matches or [None])[0]


class SkippedRecords:
    """Thread- and process-safe collector of skipped records: ``(id, file, reason)`` rows.

    Args:
        csv_path: where to append rows (``<run>/skipped.csv``); ``None`` keeps
            them in memory only (one process).
    """

    def __init__(self, csv_path: str | Path | None = None):
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self._rows: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        if self.csv_path is not None:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            with self._file_lock():
                if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
                    self._append_line(SKIPPED_HEADER)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock")  # locks do not cross process boundaries; each worker makes its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _file_lock(self) -> FileLock:
        assert self.csv_path is not None
        return FileLock(str(self.csv_path.with_name(f".{self.csv_path.name}.lock")))

    def _append_line(self, row: tuple[str, ...]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(row)
        with open(self.csv_path, "a", encoding="utf-8", newline="") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())

    def _rows_on_disk(self) -> list[tuple[str, str, str]]:
        with open(self.csv_path, encoding="utf-8", newline="") as handle:
            rows = [tuple(row) for row in csv.reader(handle)]
        return [row for row in rows[1:] if len(row) == 3]  # type: ignore[misc]

    def add(self, record: Mapping[str, Any], reason: str | BaseException, file: str | None = None) -> bool:
        """Record that ``record`` was skipped because of ``reason``; log a warning.

        Args:
            record: the record (its ``id`` and ``image`` name the row).
            reason: a reason string, or the exception; a
                :class:`~workbench.errors.DataError` gives its file and reason.
            file: the file to name; default the error's file, else ``record["image"]``.

        Returns:
            ``True`` when the row is new, ``False`` when the same skip was already recorded.
        """
        if isinstance(reason, DataError):
            file = file or reason.path
            text = reason.reason
        else:
            text = str(reason) if not isinstance(reason, BaseException) else f"{type(reason).__name__}: {reason}"
        row = (str(record.get("id", "")), str(file or record.get("image") or ""), text)
        with self._lock:
            if row in self._rows:
                return False
            if self.csv_path is not None:
                with self._file_lock():
                    if row in self._rows_on_disk():
                        self._rows.append(row)
                        return False
                    self._append_line(row)
            self._rows.append(row)
        logger.warning("skipped record %s (%s): %s", row[0], row[1], row[2])
        return True

    @property
    def rows(self) -> list[tuple[str, str, str]]:
        """Every skip recorded so far, including other processes' when a CSV is kept."""
        if self.csv_path is not None and self.csv_path.exists():
            with self._file_lock():
                return self._rows_on_disk()
        with self._lock:
            return list(self._rows)

    def __len__(self) -> int:
        return len(self.rows)
