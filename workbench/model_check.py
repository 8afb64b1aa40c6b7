"""Checking the model store against its index, and repairing what a crash or a bad disk left.

``workbench models verify`` reads every stored weights file against the sha256
in its index row and lists what does not agree:

- ``damaged`` / ``missing``: an index row whose weights fail the hash or are gone
  (fix: the row and its folder are removed; ``latest`` moves to the newest
  remaining version and the number is never reused);
- ``orphan``: a version folder with no index row, what a process killed between
  the rename and the index commit leaves (fix: removed, its number kept reserved);
- ``leftover``: a staging folder of a dead writer, a half-emptied ``.trash``, a
  temporary file next to a record (fix: removed);
- ``record``: a ``record.json`` missing or out of step with the index, e.g. after
  a kill between the index commit and the alias refresh (fix: rewritten from the index).

A live writer's staging folder is told from a dead one's by its lock: a writer
holds ``.staging/<id>.lock`` (an OS file lock, released when the process dies)
for as long as the folder exists, so the fix removes only folders whose lock it
can take. Everything else is fixed under the store's write lock.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock
from filelock import Timeout as LockTimeout

from workbench.fsutil import sha256_of_file

if TYPE_CHECKING:  # pragma: no cover - type hints only
    from workbench.model_store import ModelStore

__all__ = ["StoreIssue", "check_store", "fix_store"]

STAGING = ".staging"
TRASH = ".trash"
STAGING_GRACE_S = 60.0


@dataclass(frozen=True)
class StoreIssue:
    """One disagreement between the store's files and its index.

    Attributes:
        kind: ``damaged``, ``missing``, ``orphan``, ``leftover`` or ``record``.
        path: the file or folder concerned.
        message: one line naming the path and the problem.
        name: the stored model name (``None`` for store-wide leftovers).
        version: the version number (``None`` where there is none).
    """

    kind: str
    path: Path
    message: str
    name: str | None = None
    version: int | None = None


def _version_issues(store: ModelStore, name: str | None) -> list[StoreIssue]:
    from workbench.model_store import RECORD_FILE, WEIGHTS_FILE

    issues: list[StoreIssue] = []
    records = store.list(name)
    indexed = {(record.name, record.version) for record in records}
    for record in records:
        folder = store.version_dir(record.name, record.version)
        weights, record_file = folder / WEIGHTS_FILE, folder / RECORD_FILE
        where = {"name": record.name, "version": record.version}
        if not weights.is_file():
            issues.append(StoreIssue("missing", weights, f"{weights}: missing", **where))
        elif sha256_of_file(weights) != record.sha256:
            issues.append(StoreIssue("damaged", weights, f"{weights}: sha256 differs from the record", **where))
        if not record_file.is_file():
            issues.append(StoreIssue("record", record_file, f"{record_file}: missing", **where))
        elif json.loads(record_file.read_text()) != record.to_dict():
            issues.append(StoreIssue("record", record_file, f"{record_file}: differs from the index", **where))
        if folder.is_dir():
            for item in sorted(folder.iterdir()):
                if item.name not in (WEIGHTS_FILE, RECORD_FILE):
                    issues.append(StoreIssue("leftover", item, f"{item}: not part of {record.ref} (a leftover temporary file)", **where))
    folders = [name] if name else sorted(p.name for p in store.root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for stored_name in folders:
        for number in store._folder_versions(stored_name):
            if (stored_name, number) not in indexed:
                path = store.version_dir(stored_name, number)
                issues.append(StoreIssue("orphan", path, f"{path}: folder not in the index", stored_name, number))
    return issues


def _stale_staging(root: Path, grace_s: float = STAGING_GRACE_S) -> list[Path]:
    """Staging folders and lock files whose writer is gone: their lock can be taken and they are ``grace_s`` old.

    The age keeps a writer that has created its lock file but not yet locked it
    (a window of microseconds) from being mistaken for a dead one.
    """
    staging = root / STAGING
    if not staging.is_dir():
        return []
    stale = []
    for item in sorted(staging.iterdir()):
        if item.suffix == ".lock" and (staging / item.stem).exists():
            continue  # judged with its folder
        lock_path = staging / f"{item.stem}.lock"
        if time.time() - item.stat().st_mtime < grace_s:
            continue
        if lock_path.exists():
            lock = FileLock(str(lock_path))
            try:
                lock.acquire(timeout=0)
            except LockTimeout:
                continue  # a live writer
            lock.release()
        stale.append(item)
    return stale


def check_store(store: ModelStore, name: str | None = None) -> list[StoreIssue]:
    """Every disagreement between files and index (of ``name`` when given), reading every weights file.

    Returns:
        The issues, versions first, then store-wide leftovers; empty when the store is consistent.
    """
    issues = _version_issues(store, name)
    if name is None:
        for item in _stale_staging(store.root):
            issues.append(StoreIssue("leftover", item, f"{item}: staging left by a writer that stopped mid-save"))
        trash = store.root / TRASH
        for item in sorted(trash.iterdir()) if trash.is_dir() else []:
            issues.append(StoreIssue("leftover", item, f"{item}: removal interrupted"))
    return issues


def _remove_path(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fix_store(store: ModelStore, name: str | None = None) -> list[StoreIssue]:
    """Repair what :func:`check_store` finds, holding the store's write lock.

    Returns:
        The issues that were fixed.
    """
    fixed: list[StoreIssue] = []
    with store._write_lock():
        issues = check_store(store, name)
        broken_rows: dict[str, list[int]] = {}
        for issue in issues:
            if issue.kind in ("damaged", "missing"):
                broken_rows.setdefault(str(issue.name), []).append(int(issue.version or 0))
            elif issue.kind == "orphan":
                store.index.reserve_version(str(issue.name), int(issue.version or 0))
                store._discard_dir(issue.path)
            elif issue.kind == "leftover":
                _remove_path(issue.path)
                if issue.path.parent.name == STAGING:
                    (issue.path.parent / f"{issue.path.stem}.lock").unlink(missing_ok=True)
            fixed.append(issue)
        for broken_name, numbers in broken_rows.items():
            store._remove_locked(broken_name, sorted(set(numbers)))
        refresh: dict[str, set[int]] = {}
        for issue in issues:
            if issue.kind == "record" and int(issue.version or 0) not in broken_rows.get(str(issue.name), []):
                refresh.setdefault(str(issue.name), set()).add(int(issue.version or 0))
        for record_name, versions in refresh.items():
            store._refresh_record_files(record_name, versions)
    return fixed
