"""Placement: one shared, eval-mode instance per stored model version, device and precision.

Grounding, a linear probe and counterfactual explanations may all ask for the
same encoder in one process; building it once and handing out the same object
keeps one copy in device memory. When the models held on a device would
exceed its memory budget, the least recently used ones are dropped *before*
the new one is moved there, so the device never holds both at once.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Iterable, NamedTuple, Protocol

import torch
from torch import nn

from workbench.devices import memory_budget_bytes, placement_precision, select_device, torch_dtype

if TYPE_CHECKING:  # pragma: no cover - type hints only
    from workbench.model_records import ModelRecord


class VersionLoader(Protocol):
    """What the cache needs of a store (:class:`~workbench.model_store.ModelStore` gives it); the cache never imports the store."""

    def resolve(self, name: str, version: int | str) -> ModelRecord:
        """The record of ``name`` at ``version`` (a number or an alias)."""

    def load(self, name: str, version: int | str) -> tuple[nn.Module, ModelRecord]:
        """A fresh CPU instance with verified weights, and its record."""

log = logging.getLogger(__name__)


class CacheKey(NamedTuple):
    """What makes two cached instances different."""

    name: str
    version: int
    device: str
    precision: str


class _CacheEntry(NamedTuple):
    model: nn.Module
    record: ModelRecord
    nbytes: int


def module_bytes(model: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (each shared tensor counted once)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


class ModelCache:
    """Shared placed instances of stored models, evicted least-recently-used per device.

    Args:
        store: what to load from (a :class:`~workbench.model_store.ModelStore`).
        memory_budget_bytes: per-device limit on the bytes of cached instances:
            ``"auto"`` asks :func:`workbench.devices.memory_budget_bytes` for each
            device (a share of CUDA memory; unlimited on CPU), an int applies to
            every device, None means unlimited.

    Instances are shared: callers must not train or modify them in place.
    """

    def __init__(self, store: VersionLoader, *, memory_budget_bytes: int | str | None = "auto") -> None:
        if isinstance(memory_budget_bytes, str) and memory_budget_bytes != "auto":
            raise ValueError(f"memory_budget_bytes must be 'auto', an int or None, got {memory_budget_bytes!r}")
        self.store = store
        self.memory_budget = memory_budget_bytes
        self._entries: OrderedDict[CacheKey, _CacheEntry] = OrderedDict()
        self._lock = threading.RLock()

    def budget_for(self, device: torch.device) -> int | None:
        """The byte budget that applies on ``device`` (None: unlimited)."""
        if self.memory_budget == "auto":
            return memory_budget_bytes(device)
        return self.memory_budget  # type: ignore[return-value]

    def get(self, name: str, version: int | str = "latest", device: str = "auto", precision: str = "auto") -> nn.Module:
        """The shared eval-mode instance of ``name`` at ``version`` on ``device`` in ``precision``.

        Args:
            name: stored model name.
            version: number, ``"v3"``, alias, or ``"latest"`` (resolved at each call,
                so a newer save is picked up).
            device: ``"auto"`` (CUDA, else MPS, else CPU) or a device string.
            precision: ``"auto"`` (fp32 on CPU), ``"fp32"``, ``"bf16"`` or ``"fp16"``;
                floating parameters and buffers are cast to it.

        Returns:
            The same ``nn.Module`` object for the same resolved key until it is evicted.

        Raises:
            RegistryError: unknown name/version/factory. IntegrityError: tampered weights.
        """
        return self.get_with_record(name, version, device=device, precision=precision)[0]

    def get_with_record(
        self, name: str, version: int | str = "latest", device: str = "auto", precision: str = "auto"
    ) -> tuple[nn.Module, ModelRecord]:
        """Like :meth:`get`, also returning the record (whose ``preprocessing`` inputs need)."""
        target = select_device(device)
        if target.type == "cuda" and target.index is None:
            # "cuda" and "cuda:0" are one device: one key, one instance.
            target = torch.device("cuda", torch.cuda.current_device())
        chosen_precision = placement_precision(target, precision)
        record = self.store.resolve(name, version)
        key = CacheKey(record.name, record.version, str(target), chosen_precision)
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
                return cached.model, cached.record
            model, record = self.store.load(record.name, record.version)
            model = model.to(dtype=torch_dtype(chosen_precision)).eval()
            nbytes = module_bytes(model)
            self._make_room(target, nbytes, key)
            model = model.to(target)
            self._entries[key] = _CacheEntry(model, record, nbytes)
            return model, record

    def _make_room(self, device: torch.device, incoming_bytes: int, key: CacheKey) -> None:
        budget = self.budget_for(device)
        if budget is None:
            return
        evicted = False
        while self.bytes_held(device) + incoming_bytes > budget:
            oldest = next((k for k in self._entries if k.device == str(device)), None)
            if oldest is None:
                break
            log.info("evicting %s:v%d (%s, %s) to stay within %d bytes on %s", *oldest, budget, device)
            del self._entries[oldest]
            evicted = True
        if incoming_bytes > budget:
            log.warning(
                "%s:v%d needs %d bytes, more than the %d-byte budget on %s; holding it anyway",
                key.name, key.version, incoming_bytes, budget, device,
            )
        if evicted:
            self._release_device_memory(device)

    @staticmethod
    def _release_device_memory(device: torch.device) -> None:
        # Only CUDA's caching allocator keeps freed blocks from other processes.
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def keys(self) -> list[CacheKey]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def bytes_held(self, device: torch.device | str | None = None) -> int:
        """Bytes of cached instances (on ``device`` when given)."""
        with self._lock:
            return sum(e.nbytes for k, e in self._entries.items() if device is None or k.device == str(device))

    def evict(self, key: CacheKey) -> bool:
        """Drop one instance; returns whether it was cached."""
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is not None:
            self._release_device_memory(torch.device(key.device))
        return entry is not None

    def forget(self, name: str, versions: Iterable[int] | None = None) -> None:
        """Drop every instance of ``name`` (of ``versions`` when given), e.g. after ``remove``."""
        wanted = None if versions is None else set(versions)
        for key in self.keys():
            if key.name == name and (wanted is None or key.version in wanted):
                self.evict(key)

    def clear(self) -> None:
        """Drop every instance."""
        for key in self.keys():
            self.evict(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries
