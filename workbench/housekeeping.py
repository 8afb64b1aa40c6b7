"""Disk housekeeping: ``workbench runs clean`` for old run folders, ``workbench models gc`` for unreferenced versions.

Both print what they remove and the bytes freed, and both have ``--dry-run``,
which only lists. A run folder's age is the time since anything in it last
changed, so a run resumed yesterday is not an old run, and one being written
now is never removed.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from workbench.errors import ConfigError
from workbench.fsutil import format_bytes
from workbench.model_index import LATEST
from workbench.model_records import ModelRecord, parse_ref

if TYPE_CHECKING:  # the store (and torch) load only when `models gc` runs, not with every CLI start
    from workbench.model_store import ModelStore

# Files that make a folder a run folder: every job writes its resolved config, finished jobs their metrics.
RUN_MARKERS = ("config.yaml", "metrics.json")
_AGE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class RunFolder:
    """A run folder found under the runs root: its path, bytes on disk and seconds since its last change."""

    path: Path
    size: int
    age_s: float


def parse_age(text: str) -> float:
    """Seconds in an age like ``7d``, ``12h``, ``30m``, ``2w`` or ``90s``.

    Raises:
        ConfigError: any other spelling.
    """
    match = _AGE.match(str(text))
    if match is None:
        raise ConfigError(f"age {text!r} is not valid: use a number and a unit s, m, h, d or w (e.g. 7d)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def folder_size(path: Path) -> int:
    """Bytes of the files under ``path`` (links not followed)."""
    return sum(item.lstat().st_size for item in path.rglob("*") if item.is_file() and not item.is_symlink())


def _newest_change(path: Path) -> float:
    return max([path.stat().st_mtime, *(item.lstat().st_mtime for item in path.rglob("*"))])


def find_run_folders(root: Path, now: float | None = None) -> list[RunFolder]:
    """Folders under ``root`` holding a ``config.yaml`` or ``metrics.json``; a run's own subfolders are not searched.

    Args:
        root: the runs root (``runs``).
        now: the clock, in seconds since the epoch (default: now).

    Returns:
        The run folders, sorted by path.
    """
    now = time.time() if now is None else now
    found: list[RunFolder] = []
    pending = [root] if root.is_dir() else []
    while pending:
        folder = pending.pop()
        if any((folder / marker).is_file() for marker in RUN_MARKERS) and folder != root:
            found.append(RunFolder(folder, folder_size(folder), now - _newest_change(folder)))
            continue
        pending.extend(child for child in folder.iterdir() if child.is_dir() and not child.is_symlink())
    return sorted(found, key=lambda run: run.path)


def removable_versions(store: ModelStore) -> list[ModelRecord]:
    """Stored versions that ``models gc`` removes.

    A version is kept when an alias points at it (``latest`` included, so the
    newest version of each name always stays) or when it is the parent, directly
    or through other parents, of a kept version; every other version goes.

    Returns:
        The records to remove, sorted by name and version.
    """
    records = {(record.name, record.version): record for record in store.list()}
    latest = {name: store.resolve(name, LATEST).version for name in store.names()}
    kept = {key for key, record in records.items() if record.aliases or record.version == latest[record.name]}
    pending = list(kept)
    while pending:
        parent = records[pending.pop()].parent
        if parent is None:
            continue
        name, version = parse_ref(parent)
        if (name, version) in records and (name, version) not in kept:
            kept.add((name, version))
            pending.append((name, version))
    return [records[key] for key in sorted(records) if key not in kept]


@click.group("runs")
def runs_group() -> None:
    """Run folders: find and remove old ones."""


@runs_group.command("clean")
@click.option("--older-than", "older_than", required=True, metavar="AGE", help="remove runs unchanged for longer than AGE (7d, 12h, 2w)")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=Path("runs"), show_default=True, help="the runs root")
@click.option("--dry-run", is_flag=True, help="only list what would be removed")
def runs_clean(older_than: str, root: Path, dry_run: bool) -> None:
    """Remove run folders (those with a config.yaml or metrics.json under ROOT) unchanged for longer than AGE."""
    limit = parse_age(older_than)
    doomed = [run for run in find_run_folders(root) if run.age_s > limit]
    for run in doomed:
        click.echo(f"{'would remove' if dry_run else 'removed'} {run.path} ({format_bytes(run.size)}, {run.age_s / 86400:.1f} days old)")
        if not dry_run:
            shutil.rmtree(run.path)
    freed = sum(run.size for run in doomed)
    click.echo(f"{len(doomed)} run folder(s), {format_bytes(freed)} ({freed} bytes) {'would be freed' if dry_run else 'freed'}")


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="only list what would be removed")
def models_gc(dry_run: bool) -> None:
    """Remove stored versions no alias points at that are neither the latest of their name nor a parent of a kept version.

    Kept: every version an alias (``best``, ``latest``...) points at, and the
    parents of kept versions, followed back through their parents.
    """
    from workbench.model_store import ModelStore

    store = ModelStore()
    doomed = removable_versions(store)
    freed = 0
    for record in doomed:
        size = folder_size(store.version_dir(record.name, record.version))
        freed += size
        click.echo(f"{'would remove' if dry_run else 'removed'} {record.ref} ({format_bytes(size)})")
        if not dry_run:
            store.remove(record.name, record.version)
    click.echo(f"{len(doomed)} version(s), {format_bytes(freed)} ({freed} bytes) {'would be freed' if dry_run else 'freed'} in {store.root}")
