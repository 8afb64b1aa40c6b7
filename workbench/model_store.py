"""The on-disk model store: versioned safetensors weights with their records, indexed in SQLite.

Layout under the store root::

    index.sqlite                      versions, aliases and version counters (WAL mode)
    .lock                             cross-process write lock (filelock)
    <name>/v<version>/model.safetensors
    <name>/v<version>/record.json     the ModelRecord, aliases included

Frozen tensors that an installed package ships unchanged (a dual encoder's
MiniLM tower, declared by the model's ``frozen_package_parts()``) are not
copied into ``model.safetensors``: the record lists them in ``package_refs``
(package, version, file sha256) and loading reads them from the package after
checking that file (see :mod:`workbench.package_weights`).

Why writes look the way they do: the weights are serialised and hashed in a
private staging folder outside the lock (the slow part), then, holding the
lock, a version number is allocated, the staging folder is renamed into place,
the record is written atomically and the index row committed. A reader only
ever sees versions whose index row exists, so it never meets half a version;
a crash leaves at most an unindexed folder whose number is never reused.
Version numbers only grow: after ``remove`` a reference like ``name:v3``
never comes to mean a different model. No pickle is read or written.
A write that runs out of disk raises :class:`~workbench.fsutil.DiskFullError`
with its staging removed; :meth:`ModelStore.check` / :meth:`ModelStore.fix`
(``workbench models verify [--fix]``) find and clear what a killed writer left.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import platformdirs
import torch
from filelock import FileLock
from filelock import Timeout as LockTimeout
from torch import nn

from workbench.devices import select_device
from workbench.errors import IntegrityError, RegistryError
from workbench.fsutil import atomic_write_json, raise_disk_full
from workbench.model_check import STAGING, StoreIssue, check_store, fix_store
from workbench.model_files import fsync_dir, read_verified_weights, state_for_saving, write_weights
from workbench.model_records import (
    ModelRecord,
    Preprocessing,
    check_alias,
    check_store_name,
    describe_record,
    json_roundtrip,
    normalize_version,
    parse_ref,
)
from workbench.model_index import LATEST, ModelIndex
from workbench.model_cache import ModelCache
from workbench.package_weights import package_parts_of, package_tensors, split_package_state
from workbench.model_factories import ModelRegistry, get_registry

__all__ = [
    "ModelRecord", "ModelStore", "Preprocessing", "default_store_root", "describe_record", "parse_ref",
    "state_for_saving",
]

WEIGHTS_FILE = "model.safetensors"
RECORD_FILE = "record.json"
INDEX_FILE = "index.sqlite"
_VERSION_DIR = re.compile(r"^v([0-9]+)$")
_STORE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def default_store_root() -> Path:
    """The store root: ``$WORKBENCH_HOME/models``, else ``<user cache dir>/medvl-workbench/models``."""
    home = os.environ.get("WORKBENCH_HOME")
    if home:
        return Path(home).expanduser() / "models"
    return Path(platformdirs.user_cache_dir("medvl-workbench")) / "models"


class ModelStore:
    """Versioned model weights + records under one root, safe for concurrent processes.

    Args:
        root: store directory; default :func:`default_store_root`.
        registry: registry used to rebuild models; default the process-wide one
            (looked up at each call, so ``reset_registry`` is honoured).
        memory_budget_bytes: for :meth:`get`: ``"auto"`` (per device from
            :func:`workbench.devices.memory_budget_bytes`), bytes, or None (unlimited).
        lock_timeout_s: how long a writer waits for another writer before failing.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        registry: ModelRegistry | None = None,
        *,
        memory_budget_bytes: int | str | None = "auto",
        lock_timeout_s: float = 120.0,
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else default_store_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self._registry = registry
        self._memory_budget = memory_budget_bytes
        self._lock_timeout_s = lock_timeout_s
        self._cache: ModelCache | None = None
        with self._write_lock():
            self.index = ModelIndex(self.root / INDEX_FILE)

    # ----------------------------------------------------------------- plumbing
    @property
    def registry(self) -> ModelRegistry:
        """The registry that rebuilds stored models."""
        return self._registry if self._registry is not None else get_registry()

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        # One writer at a time across processes; SQLite's own locking covers readers.
        lock = FileLock(str(self.root / ".lock"), timeout=self._lock_timeout_s)
        try:
            lock.acquire(poll_interval=0.01)
        except LockTimeout as error:
            raise RegistryError(
                f"{self.root / '.lock'}: another writer held the store lock for more than {self._lock_timeout_s}s"
            ) from error
        try:
            yield
        finally:
            lock.release()

    def version_dir(self, name: str, version: int) -> Path:
        """The folder of one version: ``root/<name>/v<version>``."""
        return self.root / check_store_name(name) / f"v{int(version)}"

    def weights_path(self, name: str, version: int) -> Path:
        """The ``model.safetensors`` of one version."""
        return self.version_dir(name, version) / WEIGHTS_FILE

    def _refresh_record_files(self, name: str, versions: Iterable[int]) -> None:
        # record.json mirrors the index (aliases included) so a folder describes itself.
        for version in sorted(set(versions)):
            record = self.index.record(name, version)
            if record is not None:
                atomic_write_json(self.version_dir(name, version) / RECORD_FILE, record.to_dict())

    @staticmethod
    def _changed_holders(before: dict[str, int], after: dict[str, int]) -> set[int]:
        """Versions that gained or lost an alias between two alias maps."""
        holders: set[int] = set()
        for alias in set(before) | set(after):
            if before.get(alias) != after.get(alias):
                holders.update(v for v in (before.get(alias), after.get(alias)) if v is not None)
        return holders

    def _folder_versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _VERSION_DIR.match(p.name)))

    def _next_version(self, name: str) -> int:
        # Unindexed folders (a crash mid-save) still reserve their numbers.
        return max([self.index.last_version(name), *self._folder_versions(name)]) + 1

    def _discard_dir(self, path: Path) -> None:
        # Rename first so a half-deleted folder is never visible under its real name.
        if path.exists():
            trash = self.root / ".trash" / uuid.uuid4().hex
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    # ----------------------------------------------------------------- writing
    def save(
        self,
        model: nn.Module | Mapping[str, torch.Tensor],
        *,
        name: str,
        factory: str,
        task: str,
        config: Mapping[str, Any],
        preprocessing: Preprocessing | Mapping[str, Any],
        metrics: Mapping[str, Any] | None = None,
        parent: str | None = None,
        aliases: Iterable[str] = (),
        plugin: str = "workbench",
        extra: Mapping[str, Any] | None = None,
    ) -> ModelRecord:
        """Store a new version of ``name``; ``latest`` moves to it.

        Args:
            model: the module (or its state dict) to store.
            name: stored model name (letters, digits, ``.``, ``_``, ``-``).
            factory: registered factory that rebuilds it with ``create_model(factory, **config)``.
            task: the model's task.
            config: keyword arguments for the factory (JSON).
            preprocessing: what inputs it was trained with.
            metrics: evaluation numbers (JSON).
            parent: ``"name:vN"`` (or ``"name:alias"`` resolvable in this store) it was trained from.
            aliases: extra aliases to point at the new version, e.g. ``("best",)``.
            plugin: the plugin saving it.
            extra: anything else (JSON).

        Returns:
            The new :class:`ModelRecord` (its ``version`` is the allocated number).

        Raises:
            RegistryError: invalid name/alias/JSON, unknown factory, a parent alias
                that does not resolve, or the write lock not acquired in time.
        """
        check_store_name(name)
        if factory not in self.registry:
            self.registry.entry(factory)  # raises, naming close matches
        config = json_roundtrip(dict(config), f"config of model {name!r}")
        if not isinstance(preprocessing, Preprocessing):
            preprocessing = Preprocessing.from_dict(dict(preprocessing))
        extra_aliases = sorted({check_alias(a) for a in aliases} - {LATEST})
        parent_ref = self._parent_ref(parent)
        state = state_for_saving(model)
        # Frozen tensors an installed package ships unchanged are recorded by reference, not copied.
        parts = package_parts_of(model) if isinstance(model, nn.Module) else []
        state, package_refs = split_package_state(state, parts, f"model {name!r}")
        staging = self.root / STAGING / uuid.uuid4().hex
        staging.parent.mkdir(parents=True, exist_ok=True)
        # Held while the staging folder exists, so `models verify --fix` can tell a live writer from a dead one.
        staging_lock = FileLock(str(staging) + ".lock")
        staging_lock.acquire()
        try:
            sha256 = write_weights(state, staging / WEIGHTS_FILE, metadata={"factory": factory})
            del state
            with self._write_lock():
                version = self._next_version(name)
                record = ModelRecord(
                    name=name, version=version, task=task, factory=factory, config=config,
                    preprocessing=preprocessing, metrics=json_roundtrip(dict(metrics or {}), "metrics"),
                    parent=parent_ref, created=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    sha256=sha256, aliases=sorted([LATEST, *extra_aliases]), plugin=plugin,
                    extra=json_roundtrip(dict(extra or {}), "extra"), package_refs=package_refs,
                )
                atomic_write_json(staging / RECORD_FILE, record.to_dict())
                target = self.version_dir(name, version)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging, target)
                fsync_dir(target.parent)
                before = self.index.aliases(name)
                try:
                    with raise_disk_full(self.index.path, 64 << 10):
                        self.index.add(record)
                except BaseException:
                    self._discard_dir(target)
                    raise
                self._refresh_record_files(name, self._changed_holders(before, self.index.aliases(name)) - {version})
            return record
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            staging_lock.release()
            Path(staging_lock.lock_file).unlink(missing_ok=True)

    def _parent_ref(self, parent: str | None) -> str | None:
        if parent is None:
            return None
        parent_name, parent_version = parse_ref(parent)
        if isinstance(parent_version, str):
            parent_version = self.resolve(parent_name, parent_version).version
        return f"{parent_name}:v{parent_version}"

    def set_alias(self, name: str, alias: str, version: int | str) -> ModelRecord:
        """Point ``alias`` (e.g. ``"best"``) at a version of ``name``.

        Args:
            name: stored model name.
            alias: the alias; ``latest`` is managed by the store and cannot be set.
            version: version number, ``"v3"``, or another alias.

        Returns:
            The record the alias now points at.

        Raises:
            RegistryError: ``latest``, a malformed alias, or an unknown name/version.
        """
        check_alias(alias)
        if alias == LATEST:
            raise RegistryError(f"alias {LATEST!r} always points at the newest version of {name!r}; it cannot be set")
        with self._write_lock():
            target = self.resolve(name, version)
            before = self.index.aliases(name)
            self.index.set_alias(name, alias, target.version)
            self._refresh_record_files(name, self._changed_holders(before, self.index.aliases(name)))
        return self.resolve(name, target.version)

    def remove(self, name: str, version: int | str | None = None) -> list[ModelRecord]:
        """Delete one version (number or alias) or, with ``version=None``, every version of ``name``.

        Aliases pointing at removed versions are dropped; ``latest`` moves to the
        newest remaining version. Numbers of removed versions are never reused.

        Returns:
            The removed records.

        Raises:
            RegistryError: unknown name or version.
        """
        with self._write_lock():
            doomed = self.list(name) if version is None else [self.resolve(name, version)]
            if not doomed:
                self.resolve(name)  # raises: unknown name, with close matches
            self._remove_locked(name, [r.version for r in doomed])
        return doomed

    def _remove_locked(self, name: str, numbers: list[int]) -> None:
        """Delete index rows and folders of ``numbers`` (the caller holds the write lock)."""
        before = self.index.aliases(name)
        self.index.delete(name, numbers)
        for number in numbers:
            self._discard_dir(self.version_dir(name, number))
        self._refresh_record_files(name, self._changed_holders(before, self.index.aliases(name)))
        folder = self.root / name
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        if self._cache is not None:
            self._cache.forget(name, numbers)

    # ----------------------------------------------------------------- reading
    def names(self) -> list[str]:
        """Stored model names, sorted."""
        return self.index.names()

    def resolve(self, name: str, version: int | str = LATEST) -> ModelRecord:
        """The record of ``name`` at ``version`` (``3``, ``"3"``, ``"v3"``, an alias, or ``"latest"``).

        Raises:
            RegistryError: unknown name (close matches listed) or version (available ones listed).
        """
        record = self.index.record(check_store_name(name), normalize_version(version))
        if record is not None:
            return record
        available = self.index.versions(name)
        if not available:
            close = difflib.get_close_matches(name, self.names(), n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RegistryError(f"no stored model named {name!r} in {self.root}{hint}")
        aliases = ", ".join(f"{a}->v{v}" for a, v in sorted(self.index.aliases(name).items())) or "none"
        raise RegistryError(f"model {name!r} has no version {version!r}; versions {available}, aliases {aliases}")

    def list(self, name: str | None = None) -> list[ModelRecord]:
        """Every stored version (of ``name`` when given), sorted by name then version."""
        return self.index.records(None if name is None else check_store_name(name))

    def load_state_dict(self, name: str, version: int | str = LATEST) -> tuple[dict[str, torch.Tensor], ModelRecord]:
        """Read a version's weights after checking their sha256, with the tensors it keeps by reference.

        The bytes are hashed and parsed from one read, so the tensors returned
        are exactly the bytes that were verified. Tensors recorded in
        ``record.package_refs`` are read from their installed package after
        checking that file's sha256.

        Returns:
            ``(state_dict, record)``; tensors on the CPU.

        Raises:
            RegistryError: unknown name/version, the weights file is missing (named), or a
                referenced package is not installed (named).
            IntegrityError: the file's sha256 differs from the record (file and both hashes named),
                or the installed package's file differs from the referenced one (package named).
        """
        record = self.resolve(name, version)
        state = read_verified_weights(self.weights_path(record.name, record.version), record.sha256, record.ref)
        if record.package_refs:
            shipped = package_tensors(record.package_refs, record.ref)
            overlap = sorted(set(shipped) & set(state))
            if overlap:
                raise IntegrityError(f"{record.ref}: tensors {overlap[:5]} are both stored and referenced; the record is inconsistent")
            state.update(shipped)
        return state, record

    def load(
        self,
        name: str,
        version: int | str = LATEST,
        registry: ModelRegistry | None = None,
        device: str | torch.device | None = None,
    ) -> tuple[nn.Module, ModelRecord]:
        """Rebuild a stored version: ``create_model(record.factory, **record.config)`` + verified weights.

        Args:
            name: stored model name.
            version: number, ``"v3"``, alias or ``"latest"``.
            registry: registry holding the factory; default the store's.
            device: where to move the model (``"auto"`` picks one); None leaves it on the CPU.

        Returns:
            ``(model, record)``; ``record.preprocessing`` is what inputs need. The model
            is in the mode its factory leaves it (normally train); call ``.eval()`` to infer.

        Raises:
            RegistryError: unknown name/version/factory, weights that do not fit the rebuilt model,
                or a package the version references that is not installed (named).
            IntegrityError: tampered weights, or a referenced package file that changed (package named).
        """
        state, record = self.load_state_dict(name, version)
        registry = registry if registry is not None else self.registry
        if record.factory not in registry:
            raise RegistryError(
                f"{record.ref} was saved by plugin {record.plugin!r} with factory {record.factory!r}, "
                "which is not registered in this process (is that plugin installed and loaded?)"
            )
        model = registry.create_model(record.factory, **record.config)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise RegistryError(
                f"weights of {record.ref} do not fit {record.factory!r} built from its config: {error}"
            ) from error
        if device is not None:
            model = model.to(select_device(str(device)))
        return model, record

    # ----------------------------------------------------------------- placement
    @property
    def cache(self) -> ModelCache:
        """The store's shared-instance cache (created on first use)."""
        if self._cache is None:
            self._cache = ModelCache(self, memory_budget_bytes=self._memory_budget)
        return self._cache

    def get(self, name: str, version: int | str = LATEST, device: str = "auto", precision: str = "auto") -> nn.Module:
        """One shared eval-mode instance per (name, version, device, precision); see :class:`ModelCache`."""
        return self.cache.get(name, version, device=device, precision=precision)

    # ----------------------------------------------------------------- checking
    def verify(self, name: str | None = None) -> list[str]:
        """Check that index, folders, records and hashes agree.

        Returns:
            One line per problem (empty when the store is consistent); see :meth:`check`.
        """
        return [issue.message for issue in self.check(name)]

    def check(self, name: str | None = None) -> list[StoreIssue]:
        """Every disagreement between the files and the index, each weights file read against its sha256.

        Returns:
            :class:`~workbench.model_check.StoreIssue` items (damaged, missing, orphan, leftover, record).
        """
        return check_store(self, name)

    def fix(self, name: str | None = None) -> list[StoreIssue]:
        """Remove orphans and broken versions, rewrite stale records (see :mod:`workbench.model_check`).

        Returns:
            The issues fixed.
        """
        return fix_store(self, name)


def open_store(path: str | Path | None) -> ModelStore:
    """The model store at ``path``, or the default one (``WORKBENCH_HOME`` or the user cache dir) when ``path`` is empty."""
    return ModelStore(path) if path else ModelStore()
