"""``workbench datasets``: the registered dataset builders, and what one of them makes of a folder.

- ``workbench datasets`` lists every builder: its name, the plugin that added
  it, and the layout it reads (the first line of its description).
- ``workbench datasets inspect NAME ROOT [key=value ...] [--json]`` runs the
  builder on ROOT with the options given (values typed as YAML, as config
  overrides are: ``seed=3``, ``classes=[NORMAL, PNEUMONIA]``) and prints the
  records per split and every record skipped, with its reason. With
  ``--json`` the records go to standard output as JSON lines (``id``,
  ``split``, ``image``, and ``text``, ``boxes`` or ``label`` where the record
  has them) and the summary to standard error, so the output pipes into
  ``jq`` as it is.
"""

from __future__ import annotations

import inspect
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import click

from workbench.config import apply_overrides
from workbench.data.skipped import SkippedRecords
from workbench.errors import ConfigError
from workbench.host import Host, pass_host
from workbench.jobs import build_records

RECORD_FIELDS = (("id", "id"), ("split", "split"), ("image", "image"), ("report", "text"), ("boxes", "boxes"), ("label", "label"))


def builder_rows(builders: Any) -> list[dict[str, str]]:
    """One row per registered builder: ``{"name", "plugin", "layout"}`` (the description's first line), sorted by name."""
    rows = []
    for name in builders.names():
        entry = builders.entry(name)
        layout = (entry.description or (inspect.getdoc(entry.item) or "")).strip().splitlines()
        rows.append({"name": name, "plugin": entry.plugin, "layout": layout[0] if layout else ""})
    return rows


def record_line(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of a record that ``inspect --json`` prints (``report`` printed as ``text``)."""
    return {shown: record[field] for field, shown in RECORD_FIELDS if field in record}


def summary_lines(name: str, root: Path, records: Sequence[dict[str, Any]], skipped: SkippedRecords) -> list[str]:
    """The human summary of one builder run: counts per split, text and box figures, every skip with its reason."""
    splits = Counter(str(record.get("split", "(none)")) for record in records)
    lines = [f"{name} at {root}: {len(records)} records"]
    order = [split for split in ("train", "val", "validate", "test") if split in splits] + sorted(set(splits) - {"train", "val", "validate", "test"})
    lines += [f"  {split:<10} {splits[split]}" for split in order]
    labels = Counter(record["label"] for record in records if isinstance(record.get("label"), (int, str)))
    if labels:
        lines.append("label counts: " + ", ".join(f"{label}: {count}" for label, count in sorted(labels.items(), key=lambda item: str(item[0]))))
    reports = [len(str(record["report"]).split()) for record in records if "report" in record]
    if reports:
        lines.append(f"report text: median {statistics.median(reports):g} words, max {max(reports)} words")
        dropped = [int(record.get("report_sentences_dropped") or 0) for record in records]
        if any(dropped):
            lines.append(f"cut to fit the text tower: {sum(1 for count in dropped if count)} records, {sum(dropped)} sentences dropped")
    boxes = [box for record in records for box in (record.get("boxes") or [])]
    if boxes or any("boxes" in record for record in records):
        categories = Counter(str(box.get("category", "")) for box in boxes)
        lines.append(f"boxes: {len(boxes)} (" + ", ".join(f"{category}: {count}" for category, count in sorted(categories.items())) + ")")
    rows = skipped.rows
    lines.append(f"skipped: {len(rows)}")
    lines += [f"  {record_id}  {file}  {reason}" for record_id, file, reason in rows]
    return lines


def run_builder(builders: Any, name: str, root: Path, options: dict[str, Any], skipped: SkippedRecords) -> list[dict[str, Any]]:
    """Call builder ``name`` on ``root`` with ``options``; an option it does not take is a :class:`ConfigError` naming those it does."""
    if name in builders:
        accepted = inspect.signature(builders.get(name)).parameters
        takes_any = any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in accepted.values())
        unknown = sorted(set(options) - set(accepted)) if not takes_any else []
        if unknown:
            known = [option for option in accepted if option not in ("root", "path", "skipped")]
            raise ConfigError(f"dataset builder {name!r} takes no option {', '.join(unknown)}; its options: {', '.join(known) or 'none'}")
    return build_records(name, root, options, builders, output_root=root, skipped=skipped)


@click.group("datasets", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of lines")
@click.pass_context
def datasets_group(context: click.Context, as_json: bool) -> None:
    """List the dataset builders: name, plugin, the layout each reads."""
    if context.invoked_subcommand is not None:
        return
    rows = builder_rows(context.find_object(Host).datasets.builders)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max((len(row["name"]) for row in rows), default=4) + 2
    plugin_width = max((len(row["plugin"]) for row in rows), default=6) + 2
    for row in rows:
        click.echo(f"{row['name']:<{width}}{row['plugin']:<{plugin_width}}{row['layout']}")


@datasets_group.command("inspect")
@click.argument("name")
@click.argument("root", type=click.Path(path_type=Path))
@click.argument("options", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per record on standard output (the summary goes to standard error)")
@pass_host
def inspect_command(host: Host, name: str, root: Path, options: tuple[str, ...], as_json: bool) -> None:
    """Build dataset NAME from ROOT and show its records per split and the records skipped, with their reasons.

    Options after ROOT go to the builder, e.g. ``seed=3 val_fraction=0.2 report_text=all``.
    The synthetic builders (phantom-cxr, phantom-fundus) write their files into ROOT when it is missing.
    """
    builder_options = apply_overrides({}, options)
    skipped = SkippedRecords()
    records = run_builder(host.datasets.builders, name, root, builder_options, skipped)
    if as_json:
        for record in records:
            click.echo(json.dumps(record_line(record), default=str))
    for line in summary_lines(name, root, records, skipped):
        click.echo(line, err=as_json)
