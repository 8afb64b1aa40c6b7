"""YAML configs read into validated pydantic settings, with CLI overrides.

Every job command takes ``--config FILE.yaml`` and trailing ``key.sub=value``
overrides. The file is read with ``yaml.safe_load`` (never ``eval``), the
overrides are applied to the nested mapping, and the result is validated by a
pydantic model whose sections forbid unknown keys, so a typo names the key and
the file. The resolved settings are saved in the run folder.
"""

from __future__ import annotations

import functools

from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, TypeVar

import click
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workbench.errors import ConfigError
from workbench.fsutil import atomic_write_text

SettingsT = TypeVar("SettingsT", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every settings section: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RecordDataSettings(StrictModel):
    """Where a job's image records come from and how they split: the fields every manifest-driven job shares.

    Attributes:
        dataset: a registered builder (``phantom-cxr``, ``ms-cxr``, ``mimic-cxr-reporting``...).
        root: its folder (phantoms are written there when missing; default ``<output_root>/data/<dataset>``).
        options: keyword arguments for the builder.
        image_key: the record field holding the image file (``image_png`` reads the phantoms' PNGs, faster than DICOM).
        train_split: ``split`` values trained on.
        eval_split: ``split`` values evaluated (held out).
        max_train: cap on training records (``null``: all).
        max_eval: cap on evaluated records (``null``: all).
    """

    dataset: str = "phantom-cxr"
    root: Path | None = None
    options: dict[str, Any] = {}
    image_key: str = "image"
    train_split: list[str] = ["train"]
    eval_split: list[str] = ["val", "test"]
    max_train: int | None = Field(None, gt=0)
    max_eval: int | None = Field(None, gt=0)


class RunSettings(StrictModel):
    """Where and how a job runs.

    Attributes:
        output_root: folder under which run folders ``<job>-<time>`` are made.
        name: optional run name replacing the time stamp.
        seed: the seed every random choice derives from.
        device: ``auto`` (CUDA, else MPS, else CPU) or a torch device string.
        precision: ``auto`` picks bf16/fp16 only where the device runs it natively.
    """

    output_root: Path = Path("runs")
    name: str | None = None
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"


class ModelSaveSettings(StrictModel):
    """Where a job stores the model it trained (the ``save:`` section).

    Attributes:
        name: the stored model name in the registry (``null``: not stored).
        store: the registry folder (``null``: ``$WORKBENCH_HOME/models`` or the user cache).
    """

    name: str | None = None
    store: Path | None = None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into its key path and its typed value (OmegaConf's dotlist grammar).

    Values are typed the way Hydra and OmegaConf users expect: ``3`` an int,
    ``1e-3`` a float (plain YAML would keep it a string), ``true`` a bool,
    ``null`` None, ``[1, 2]`` a list, ``abc`` and ``a/b.yaml`` strings; an
    empty value is the empty string. Interpolations (``${...}``) stay text.

    Args:
        text: one override argument.

    Returns:
        ``(["a", "b", "c"], value)``.

    Raises:
        ConfigError: no ``=``, an empty key or key part, or a value OmegaConf cannot parse.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw_value = text.split("=", 1)
    parts = [part for part in key.strip().split(".")]
    if not key.strip() or any(not part for part in parts):
        raise ConfigError(f"override {text!r} has an empty key")
    if not raw_value.strip():
        return parts, ""
    try:
        # Parsed under a fixed key, so the user's key never meets OmegaConf's own key rules.
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw_value}"]), resolve=False)
    except OmegaConfBaseException as error:
        raise ConfigError(f"override {text!r}: cannot parse the value: {error}") from error
    return parts, parsed["value"]


def apply_overrides(mapping: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested mapping, in place, and return it."""
    for text in overrides:
        parts, value = parse_override(text)
        node = mapping
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {text!r}: {where!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return mapping


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` with ``yaml.safe_load``.

    Raises:
        ConfigError: missing file, invalid YAML, or a top level that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: ``source: key.sub: message``."""
    lines = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = "unknown key" if problem["type"] == "extra_forbidden" else problem["msg"]
        lines.append(f"{source}: {key}: {message}")
    return "\n".join(lines)


def load_settings(
    model: type[SettingsT],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> SettingsT:
    """Read, override and validate a job's settings.

    Args:
        model: the pydantic model of the job's settings (sections are ``StrictModel``).
        path: the YAML file; ``None`` uses the model's defaults.
        overrides: ``key.sub=value`` strings applied after the file.
        defaults: a mapping applied before the file (e.g. a plugin's preset).

    Returns:
        The validated settings.

    Raises:
        ConfigError: naming the file (or "overrides") and each offending key.
    """
    mapping: dict[str, Any] = dict(defaults or {})
    source = "defaults"
    if path is not None:
        mapping.update(read_yaml(path))
        source = str(path)
    overrides = list(overrides)
    apply_overrides(mapping, overrides)
    if overrides:
        source = f"{source} (with overrides {' '.join(overrides)})"
    try:
        return model.model_validate(mapping)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from error


def settings_to_yaml(settings: BaseModel) -> str:
    """The resolved settings as YAML text (paths as strings)."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)


def save_settings(settings: BaseModel, path: str | Path) -> Path:
    """Write the resolved settings to ``path`` as YAML, atomically."""
    return atomic_write_text(path, settings_to_yaml(settings))


def config_options(command: Callable) -> Callable:
    """Click decorator adding ``--config FILE`` and trailing ``key.sub=value`` overrides.

    The decorated command receives ``config`` (a Path or None) and ``overrides``
    (a tuple of strings); pass both to :func:`load_settings`.
    """
    command = click.argument("overrides", nargs=-1, metavar="[KEY.SUB=VALUE]...")(command)
    command = click.option(
        "--config",
        "config",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="YAML config file; trailing key.sub=value arguments override it.",
    )(command)
    return command


def resumable_config_options(command: Callable) -> Callable:
    """Click decorator for training jobs: :func:`config_options` plus ``--resume RUN_DIR``.

    The decorated command receives ``config``, ``overrides`` and ``resume``; with
    ``--resume`` and no ``--config``, ``config`` is the run folder's saved ``config.yaml``.
    """

    @functools.wraps(command)
    def with_run_config(*args: Any, config: Path | None = None, resume: Path | None = None, **kwargs: Any) -> Any:
        if resume is not None and config is None:
            config = Path(resume) / "config.yaml"
        return command(*args, config=config, resume=resume, **kwargs)

    with_run_config = click.option("--resume", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
                                   help="continue the run in this folder from its latest checkpoint")(with_run_config)
    return config_options(with_run_config)


__all__ = [
    "resumable_config_options",
    "StrictModel",
    "RunSettings",
    "Field",
    "parse_override",
    "apply_overrides",
    "read_yaml",
    "load_settings",
    "save_settings",
    "settings_to_yaml",
    "config_options",
    "format_validation_error",
]


def merge_options(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it, nested dicts merged key by key (neither input is changed).

    Used by demo steps: the run's own values, then the step's section of the demo config.
    """
    merged = dict(base)
    for key, value in update.items():
        merged[key] = merge_options(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged
