"""Manifests: CSV / JSONL / JSON files of records -> validated lists of dicts.

A record is one study: ``image`` (a file path, always required) and, as the
task needs, ``report`` (str), ``label`` (int or str) or ``labels`` (dict),
``mask`` and ``fov`` (file paths), ``masks`` (name -> file path), ``boxes`` (a list of
``{"phrase", "x", "y", "w", "h"}`` in pixels, x = column, y = row), ``split``
and ``id``. Other fields pass through untouched.

Relative paths in ``image``, ``image_png``, ``mask``, ``fov`` and ``masks`` resolve
against the manifest's folder, so a dataset folder can move as a whole. In CSV
an empty cell means "absent", and list or object cells (``boxes``, ``labels``,
``masks``, ``findings``) hold JSON.

Errors name the file, the line and the field, e.g.
``manifest.csv: line 7, field 'boxes': box 0: w must be > 0``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence, overload

from workbench.catalogs import NamedCatalog
from workbench.errors import ManifestError
from workbench.fsutil import atomic_write_text

PATH_FIELDS = ("image", "image_png", "mask", "fov")
PATH_MAP_FIELDS = ("masks",)  # name -> file path, e.g. one mask per finding
JSON_FIELDS = ("boxes", "labels", "findings", "masks")
LINE_KEY = "_line"  # set by format readers: the record's line in the file, for messages

ManifestReader = Callable[[Path], list[dict[str, Any]]]
_INTEGER = re.compile(r"^[+-]?\d+$")


def _decode_cell(value: str) -> Any:
    """A CSV cell holding a JSON list or object (as :func:`write_manifest` writes them) becomes that value."""
    stripped = value.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return value  # left as text; a JSON field is then reported by validation
    return value


def read_csv_records(path: Path) -> list[dict[str, Any]]:
    """Raw CSV rows as dicts (strings, JSON cells decoded, empty cells dropped), each with ``_line``."""
    records = []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle)
        if rows.fieldnames is None:  # reading the header now makes line_num count from its end
            return []
        line = rows.line_num + 1
        for row in rows:
            fields = {key.strip(): _decode_cell(value) for key, value in row.items() if key and value not in (None, "")}
            records.append({**fields, LINE_KEY: line})
            line = rows.line_num + 1  # a quoted cell may span lines; the next row starts after it
    return records


def read_jsonl_records(path: Path) -> list[dict[str, Any]]:
    """One JSON object per non-blank line, each with its line number under ``_line``.

    Raises:
        ManifestError: a line is not valid JSON or not an object.
    """
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(path, f"line {line_number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(value, dict):
                raise ManifestError(path, f"line {line_number}: expected a JSON object, got {type(value).__name__}")
            records.append({**value, LINE_KEY: line_number})
    return records


def read_json_records(path: Path) -> list[dict[str, Any]]:
    """A JSON list of objects (records are numbered from 1 in messages).

    Raises:
        ManifestError: not valid JSON, or not a list of objects.
    """
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(path, f"line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ManifestError(path, "expected a JSON list of objects")
    return [dict(item) for item in value]


BUILTIN_MANIFEST_READERS: dict[str, ManifestReader] = {"csv": read_csv_records, "jsonl": read_jsonl_records, "json": read_json_records}
_FORMAT_ALIASES = {"ndjson": "jsonl"}

# The table :func:`read_manifest` consults: the host's manifest-format catalog
# (filled by every plugin's ``workbench_register_datasets`` hook) once a host
# is built, the built-in readers before that (library use without a host).
_installed_formats: NamedCatalog[ManifestReader] | None = None


def builtin_manifest_formats() -> NamedCatalog[ManifestReader]:
    """A fresh catalog of the built-in formats (``csv``, ``jsonl``, ``json``), owned by ``"workbench"``."""
    catalog: NamedCatalog[ManifestReader] = NamedCatalog("manifest format")
    for name, reader in BUILTIN_MANIFEST_READERS.items():
        catalog.add(name, reader, plugin="workbench")
    return catalog


def install_manifest_formats(formats: NamedCatalog[ManifestReader] | None) -> None:
    """Make ``formats`` the table :func:`read_manifest` reads by (the host does this); ``None`` restores the built-ins.

    Args:
        formats: a catalog of ``reader(path) -> list[dict]`` by format name
            (the host's ``datasets.manifest_formats``), or ``None``.
    """
    global _installed_formats
    _installed_formats = formats


def manifest_formats() -> NamedCatalog[ManifestReader]:
    """The manifest formats in force: the installed host catalog, else the built-ins."""
    return _installed_formats if _installed_formats is not None else builtin_manifest_formats()


def manifest_format(path: str | Path) -> str:
    """The registered format name for ``path``, from its extension."""
    suffix = Path(path).suffix.lower().lstrip(".")
    return _FORMAT_ALIASES.get(suffix, suffix)


def _number_problem(box: dict[str, Any], key: str, positive: bool) -> str | None:
    value = box.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{key} must be a finite number, got {value!r}"
    if positive and value <= 0:
        return f"{key} must be > 0"
    if not positive and value < 0:
        return f"{key} must be >= 0"
    return None


def _box_problems(boxes: Any) -> list[str]:
    if not isinstance(boxes, list):
        return [f"must be a list of boxes, got {type(boxes).__name__}"]
    problems = []
    for index, box in enumerate(boxes):
        if not isinstance(box, dict):
            problems.append(f"box {index}: must be an object with phrase, x, y, w, h")
            continue
        phrase = box.get("phrase")
        if not isinstance(phrase, str) or not phrase.strip():
            problems.append(f"box {index}: phrase must be a non-empty string")
        for key, positive in (("x", False), ("y", False), ("w", True), ("h", True)):
            problem = _number_problem(box, key, positive)
            if problem:
                problems.append(f"box {index}: {problem}")
    return problems


def validate_record(record: dict[str, Any], require: Sequence[str] = ("image",)) -> list[str]:
    """Problems with one record, each as ``"field 'name': problem"``; empty when the record is good.

    Args:
        record: a record after parsing (paths as strings, ``boxes`` as a list).
        require: fields that must be present and non-empty (``image`` always is).

    Returns:
        A list of problem strings, in field order.
    """
    problems = []
    for field in dict.fromkeys(("image", *require)):
        value = record.get(field)
        if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, (list, dict)) and not value and field != "boxes"):
            problems.append(f"field '{field}': required but missing or empty")
    for field in PATH_FIELDS:
        if field in record and record[field] is not None and not isinstance(record[field], str):
            problems.append(f"field '{field}': must be a file path string, got {type(record[field]).__name__}")
    if record.get("report") is not None and not isinstance(record["report"], str):
        problems.append(f"field 'report': must be a string, got {type(record['report']).__name__}")
    label = record.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (int, str))):
        problems.append(f"field 'label': must be an integer or a string, got {label!r}")
    for field in PATH_MAP_FIELDS:
        value = record.get(field)
        if value is not None and not (isinstance(value, dict) and all(isinstance(path, str) and path for path in value.values())):
            problems.append(f"field '{field}': must be an object mapping names to file paths")
    labels = record.get("labels")
    if labels is not None and not (isinstance(labels, dict) and all(isinstance(key, str) for key in labels)):
        problems.append("field 'labels': must be an object mapping label names to values")
    if record.get("boxes") is not None:
        problems.extend(f"field 'boxes': {problem}" for problem in _box_problems(record["boxes"]))
    return problems


def _parse_fields(raw: dict[str, Any], base_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Decode JSON-in-CSV cells, integer labels and relative paths; return the record and decode problems."""
    record, problems = dict(raw), []
    for field in JSON_FIELDS:
        if isinstance(record.get(field), str):
            try:
                record[field] = json.loads(record[field])
            except json.JSONDecodeError as exc:
                problems.append(f"field '{field}': not valid JSON ({exc.msg})")
    label = record.get("label")
    if isinstance(label, str) and _INTEGER.match(label.strip()):
        record["label"] = int(label)
    elif isinstance(label, float) and label.is_integer():
        record["label"] = int(label)
    for field in PATH_FIELDS:
        value = record.get(field)
        if isinstance(value, str) and value.strip():
            record[field] = _absolute(value, base_dir)
    for field in PATH_MAP_FIELDS:
        value = record.get(field)
        if isinstance(value, dict):
            record[field] = {name: _absolute(path, base_dir) if isinstance(path, str) and path.strip() else path for name, path in value.items()}
    return record, problems


def _absolute(value: str, base_dir: Path) -> str:
    return str((base_dir / Path(value.strip()).expanduser()).absolute())


@overload
def read_manifest(path: str | Path, *, require: Sequence[str] = ..., on_error: Literal["raise"] = ..., format_name: str | None = ...,
                  formats: NamedCatalog[ManifestReader] | None = ...) -> list[dict[str, Any]]: ...
@overload
def read_manifest(path: str | Path, *, require: Sequence[str] = ..., on_error: Literal["skip"], format_name: str | None = ...,
                  formats: NamedCatalog[ManifestReader] | None = ...) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]: ...


def read_manifest(
    path: str | Path,
    *,
    require: Sequence[str] = ("image",),
    on_error: Literal["raise", "skip"] = "raise",
    format_name: str | None = None,
    formats: NamedCatalog[ManifestReader] | None = None,
) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Read and validate a manifest.

    Args:
        path: a ``.csv``, ``.jsonl`` or ``.json`` file (or a registered format).
        require: fields every record must have for the task (``image`` always).
        on_error: ``"raise"`` refuses the manifest at its first bad record;
            ``"skip"`` drops bad records and reports them.
        format_name: a registered manifest format; default from the extension.
        formats: the format catalog to read by; default :func:`manifest_formats`
            (the host's catalog, where a plugin's ``add_manifest_format`` lands).

    Returns:
        With ``"raise"``, the records (paths absolute, ``id`` filled in from
        the line when absent). With ``"skip"``, ``(good_records, problems)``
        where ``problems`` is a list of ``(line, reason)``.

    Raises:
        ManifestError: unreadable file, unknown format, duplicate ids, or (with
            ``"raise"``) a bad record; the message names file, line and field.
    """
    path = Path(path)
    name = format_name or manifest_format(path)
    formats = formats if formats is not None else manifest_formats()
    if name not in formats:
        raise ManifestError(path, f"unknown manifest format {name!r}; known: {', '.join(formats.names())}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    try:
        raw_records = formats.get(name)(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(path, f"cannot read manifest: {exc}") from exc
    records, skipped, seen_ids = [], [], {}
    for index, raw in enumerate(raw_records, start=1):
        line = int(raw.pop(LINE_KEY, index))
        record, problems = _parse_fields(raw, path.parent.absolute())
        record["id"] = str(record["id"]) if record.get("id") not in (None, "") else f"{path.stem}-{line}"
        problems += validate_record(record, require)
        if record["id"] in seen_ids:
            problems.append(f"field 'id': {record['id']!r} is also used on line {seen_ids[record['id']]}")
        if problems:
            if on_error == "raise":
                raise ManifestError(path, f"line {line}, " + f"; line {line}, ".join(problems))
            skipped.append((line, "; ".join(problems)))
            continue
        seen_ids[record["id"]] = line
        records.append(record)
    return (records, skipped) if on_error == "skip" else records


def _relative_if_under(value: Any, folder: Path) -> Any:
    if not isinstance(value, str) or not value:
        return value
    candidate = Path(value)
    if candidate.is_absolute() and candidate.is_relative_to(folder):
        return candidate.relative_to(folder).as_posix()
    return value


def _relative_paths(key: str, value: Any, folder: Path) -> Any:
    if key in PATH_FIELDS:
        return _relative_if_under(value, folder)
    if key in PATH_MAP_FIELDS and isinstance(value, dict):
        return {name: _relative_if_under(path, folder) for name, path in value.items()}
    return value


def write_manifest(records: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write records as CSV, JSONL or JSON (by extension), atomically.

    Paths under the manifest's folder are written relative to it, so the
    folder can move; nested values in CSV are JSON-encoded. CSV has no
    types: other numbers come back as strings (``label`` as an integer).

    Args:
        records: the records to write (as returned by :func:`read_manifest`).
        path: the destination ``.csv``, ``.jsonl`` or ``.json`` file.

    Returns:
        The path written.

    Raises:
        ManifestError: an extension this function cannot write.
    """
    path = Path(path)
    folder = path.parent.absolute()
    rows = [{key: _relative_paths(key, value, folder) for key, value in record.items() if key != LINE_KEY} for record in records]
    kind = manifest_format(path)
    if kind == "jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    elif kind == "json":
        text = json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
    elif kind == "csv":
        columns = list(dict.fromkeys(["id", "image", *(key for row in rows for key in row)]))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: json.dumps(value) if isinstance(value, (list, dict)) else ("" if value is None else value) for key, value in row.items()})
        text = buffer.getvalue()
    else:
        raise ManifestError(path, f"cannot write manifests of kind {kind!r}; use .csv, .jsonl or .json")
    atomic_write_text(path, text)
    return path
