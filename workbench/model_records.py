"""What the model store records with every saved version.

A version's weights never travel without the preprocessing they were trained
with: a bare weights file that silently gets the wrong image size or
normalisation is the most common complaint of open_clip users, so
:class:`Preprocessing` is part of every :class:`ModelRecord` and comes back
with every load. Everything here is plain JSON; nothing is pickled.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from workbench.errors import RegistryError

INTENSITY_MODES: tuple[str, ...] = ("minmax", "zscore", "window", "none")
RECORD_FORMAT = 1
# Records whose weights keep package-shipped tensors by reference; older readers must refuse them, not miss the tensors.
RECORD_FORMAT_PACKAGE_REFS = 2

# Store names become folder names, so they are restricted to portable characters.
_STORE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^v?([0-9]+)$")


def check_store_name(name: str) -> str:
    """Return ``name`` if it can name a stored model (it becomes a folder name).

    Raises:
        RegistryError: empty, too long, or with characters other than letters,
            digits, ``.``, ``_``, ``-`` (first character a letter or digit).
    """
    if not isinstance(name, str) or not _STORE_NAME.match(name):
        raise RegistryError(
            f"stored model name {name!r} is not valid: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (at most 128 characters)"
        )
    return name


def check_alias(alias: str) -> str:
    """Return ``alias`` if it can name a version (``best``, ``production``...).

    Raises:
        RegistryError: not a letter-first identifier, or shaped like a version (``v3``).
    """
    if not isinstance(alias, str) or not _ALIAS.match(alias) or _VERSION.match(alias):
        raise RegistryError(f"alias {alias!r} is not valid: use a letter-first name that is not a version like 'v3'")
    return alias


def normalize_version(version: int | str) -> int | str:
    """Turn ``3``, ``"3"`` or ``"v3"`` into ``3``; return an alias (``"latest"``, ``"best"``) as is.

    Raises:
        RegistryError: a version below 1 or a malformed alias.
    """
    if isinstance(version, bool):
        raise RegistryError(f"version {version!r} is not valid")
    if isinstance(version, int):
        number = version
    else:
        match = _VERSION.match(str(version).strip())
        if match is None:
            return check_alias(str(version).strip())
        number = int(match.group(1))
    if number < 1:
        raise RegistryError(f"version {version!r} is not valid: versions start at 1")
    return number


def parse_ref(ref: str) -> tuple[str, int | str]:
    """Split a model reference ``"name"``, ``"name:3"``, ``"name:v3"`` or ``"name:best"``.

    Args:
        ref: the reference; without ``:`` the version is ``"latest"``.

    Returns:
        ``(name, version)`` with ``version`` an int or an alias string.

    Raises:
        RegistryError: a malformed name or version.
    """
    name, sep, version = str(ref).partition(":")
    if not sep:
        return check_store_name(name), "latest"
    return check_store_name(name), normalize_version(version)


def json_roundtrip(value: Any, what: str) -> Any:
    """Return ``value`` as it will read back from JSON (tuples become lists).

    Raises:
        RegistryError: ``value`` holds something JSON cannot represent.
    """
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as error:
        raise RegistryError(f"{what} must be JSON-serialisable: {error}") from error


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RegistryError(f"preprocessing {what} must be a positive integer, got {value!r}")
    return value


@dataclass
class Preprocessing:
    """How inputs must be prepared for a model; stored with every version.

    Attributes:
        image_size: side length, or ``[H, W]`` / ``[D, H, W]`` of the network input.
        channels: input channels ``C`` of the ``(B, C, H, W)`` tensor the model takes.
        intensity: ``"minmax"`` (to [0, 1]), ``"zscore"`` (subtract mean, divide std),
            ``"window"`` (clip to a window given in ``extra``, then [0, 1]) or ``"none"``.
        mean: per-channel mean applied after intensity scaling (empty: none);
            length 1 or ``channels``.
        std: per-channel std, same length as ``mean``; every value > 0.
        tokenizer: the text tokenizer name, for models that take text.
        context_length: tokens per text input, with ``tokenizer``.
        extra: anything else a plugin needs (window centre/width, spacing), JSON only.
    """

    image_size: int | list[int]
    channels: int = 1
    intensity: str = "minmax"
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    tokenizer: str | None = None
    context_length: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalised to the JSON form so a loaded Preprocessing compares equal to the saved one.
        if isinstance(self.image_size, (list, tuple)):
            if len(self.image_size) not in (2, 3):
                raise RegistryError(
                    f"preprocessing image_size must be an int, [H, W] or [D, H, W], got {list(self.image_size)!r}"
                )
            self.image_size = [_positive_int(s, "image_size") for s in self.image_size]
        else:
            _positive_int(self.image_size, "image_size")
        _positive_int(self.channels, "channels")
        if self.intensity not in INTENSITY_MODES:
            raise RegistryError(f"preprocessing intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}")
        # A single number is the common one-channel spelling (mean=0.5).
        self.mean = [float(m) for m in ([self.mean] if isinstance(self.mean, (int, float)) else self.mean)]
        self.std = [float(s) for s in ([self.std] if isinstance(self.std, (int, float)) else self.std)]
        if len(self.mean) != len(self.std) or len(self.mean) not in (0, 1, self.channels):
            raise RegistryError(
                f"preprocessing mean and std must both have length 1 or channels ({self.channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise RegistryError(f"preprocessing std values must be > 0, got {self.std}")
        if self.context_length is not None:
            _positive_int(self.context_length, "context_length")
        self.extra = json_roundtrip(dict(self.extra), "preprocessing extra")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Build from the JSON form.

        Raises:
            RegistryError: an unknown key (named) or an invalid value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RegistryError(f"preprocessing has unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


@dataclass
class ModelRecord:
    """The metadata of one stored model version (``record.json`` and the SQLite index).

    Attributes:
        name: stored model name.
        version: integer version, from 1.
        task: the model's task.
        factory: registry name whose ``create_model(factory, **config)`` rebuilds it.
        config: keyword arguments for the factory (JSON).
        preprocessing: how inputs must be prepared.
        metrics: evaluation numbers at save time.
        parent: ``"name:vN"`` of the version this one was trained from, or None.
        created: ISO-8601 UTC time of saving.
        sha256: hex digest of ``model.safetensors``.
        aliases: aliases pointing at this version now (``latest``, ``best``...).
        plugin: the plugin that saved it.
        extra: anything else (JSON).
        package_refs: tensors left out of ``model.safetensors`` because an installed
            package ships them unchanged (see :mod:`workbench.package_weights`): each
            the package, version, file, its sha256, the key prefix and the tensor names.
    """

    name: str
    version: int
    task: str
    factory: str
    config: dict[str, Any]
    preprocessing: Preprocessing
    metrics: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    created: str = ""
    sha256: str = ""
    aliases: list[str] = field(default_factory=list)
    plugin: str = "workbench"
    extra: dict[str, Any] = field(default_factory=dict)
    package_refs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """The reference ``"name:vN"`` that :func:`parse_ref` reads back."""
        return f"{self.name}:v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (with a ``format`` number for future readers)."""
        data = asdict(self)
        data["preprocessing"] = self.preprocessing.to_dict()
        data["format"] = RECORD_FORMAT_PACKAGE_REFS if self.package_refs else RECORD_FORMAT
        if not self.package_refs:
            del data["package_refs"]  # a record without references reads in older workbenches as before
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelRecord:
        """Build from the JSON form.

        Raises:
            RegistryError: a missing or unknown key, or a newer record format.
        """
        data = dict(data)
        record_format = data.pop("format", RECORD_FORMAT)
        if record_format > RECORD_FORMAT_PACKAGE_REFS:
            raise RegistryError(f"model record format {record_format} is newer than this workbench reads")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RegistryError(f"model record has unknown keys {unknown}")
        try:
            data["preprocessing"] = Preprocessing.from_dict(data["preprocessing"])
            return cls(**data)
        except (KeyError, TypeError) as error:
            raise RegistryError(f"model record is incomplete: {error}") from error


def describe_record(record: ModelRecord, weights_path: str | Path | None = None) -> dict[str, Any]:
    """A flat, display-ordered dict of a record, for ``workbench models show``.

    Args:
        record: the record.
        weights_path: the version's ``model.safetensors``; adds its path and size.

    Returns:
        JSON-serialisable dict: ref, name, version, aliases, task, factory, plugin,
        created, parent, sha256, config, preprocessing, metrics, extra
        (and weights, weights_bytes).
    """
    description: dict[str, Any] = {
        "ref": record.ref,
        "name": record.name,
        "version": record.version,
        "aliases": list(record.aliases),
        "task": record.task,
        "factory": record.factory,
        "plugin": record.plugin,
        "created": record.created,
        "parent": record.parent,
        "sha256": record.sha256,
        "config": record.config,
        "preprocessing": record.preprocessing.to_dict(),
        "metrics": record.metrics,
        "extra": record.extra,
    }
    if record.package_refs:
        description["package_refs"] = [{k: v for k, v in ref.items() if k != "keys"} | {"tensors": len(ref["keys"])}
                                       for ref in record.package_refs]
    if weights_path is not None:
        path = Path(weights_path)
        description["weights"] = str(path)
        description["weights_bytes"] = path.stat().st_size if path.exists() else None
    return description
