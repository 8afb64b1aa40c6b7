"""The built-in plugin: the phantom datasets, the manifest formats and ``workbench phantoms``.

It goes through the same hooks as any third-party plugin, so the contract is
exercised by the host's own code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click

from workbench import hookimpl


def _phantom_records(root: Path, writer: Callable[..., Path], n: int, seed: int, size: int, dataset: str,
                     **writer_options: Any) -> list[dict[str, Any]]:
    """Records (each tagged ``dataset``) of the phantoms under ``root``, (re)written by ``writer`` when missing or asked with other options.

    ``phantom_options.json`` beside the manifest remembers ``n``, ``seed``,
    ``size`` and the writer's other options: asking for 400 studies where 48
    were written rewrites them rather than silently handing back the 48.
    """
    from workbench.data.manifests import read_manifest
    from workbench.fsutil import atomic_write_text

    root = Path(root).resolve()
    stamp, wanted = root / "phantom_options.json", {"n": int(n), "seed": int(seed), "size": int(size), **writer_options}
    manifest = root / "manifest.jsonl"
    try:
        current = json.loads(stamp.read_text(encoding="utf-8")) if stamp.is_file() else None
    except (OSError, ValueError):
        current = None  # an unreadable stamp: write the phantoms again
    if manifest.is_file() and current is None and not stamp.exists():
        current = wanted  # written before stamps existed: trust it as it is
    if not manifest.is_file() or current != wanted:
        manifest = writer(root, n, seed=seed, size=size, **writer_options)
        atomic_write_text(stamp, json.dumps(wanted))
    return [dict(record, dataset=dataset) for record in read_manifest(manifest)]


def build_cxr_phantoms(root: Path, n: int = 200, seed: int = 0, size: int = 256,
                       formats: tuple[str, ...] | list[str] = ("dcm", "png")) -> list[dict[str, Any]]:
    """Dataset builder "phantom-cxr": chest phantoms under ``root`` (written when missing or asked with other options).

    ``formats`` picks the image files written (``dcm``, ``png``, ``nii``): a job that reads PNG only (the demo's
    pretraining) can leave the DICOM copies out and write a third of the bytes.

    Returns:
        Records with ``image`` (the DICOM when written, else the PNG), ``image_png``, ``report``, ``labels``,
        ``boxes``, ``masks``, ``split``.
    """
    from workbench.data.phantoms import write_cxr_phantoms

    options = {} if tuple(formats) == ("dcm", "png") else {"formats": list(formats)}  # old stamps stay valid
    return _phantom_records(root, write_cxr_phantoms, n, seed, size, "phantom-cxr", **options)


def build_fundus_phantoms(root: Path, n: int = 20, seed: int = 0, size: int = 256) -> list[dict[str, Any]]:
    """Dataset builder "phantom-fundus": fundus phantoms under ``root`` (written when missing or asked with other options).

    Returns:
        Records ``{"id", "image", "mask", "fov", "split", "dataset"}`` (paths to RGB PNG, vessel mask, field of view).
    """
    from workbench.data.phantoms import write_fundus_phantoms

    return _phantom_records(root, write_fundus_phantoms, n, seed, size, "phantom-fundus")


@hookimpl
def workbench_register_datasets(catalog: Any) -> None:
    """Register the phantom builders and the CSV / JSONL manifest formats."""
    from workbench.data.manifests import read_csv_records, read_json_records, read_jsonl_records

    catalog.add_builder("phantom-cxr", build_cxr_phantoms, description="synthetic chest radiographs with reports, masks and boxes")
    catalog.add_builder("phantom-fundus", build_fundus_phantoms, description="synthetic fundus images with exact vessel masks")
    catalog.add_manifest_format("csv", read_csv_records, description="CSV, one record per row; nested fields JSON-encoded")
    catalog.add_manifest_format("jsonl", read_jsonl_records, description="JSON lines, one record per line")
    catalog.add_manifest_format("json", read_json_records, description="a JSON list of records")


@click.command("phantoms")
@click.argument("kind", type=click.Choice(["cxr", "fundus"]))
@click.option("--n", "count", type=int, default=100, show_default=True, help="number of studies/images")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True, help="output folder")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=int, default=256, show_default=True, help="image side in pixels")
@click.option("--layout", type=click.Choice(["manifest", "drive"]), default="manifest", show_default=True, help="fundus only: DRIVE folder layout")
def phantoms_command(kind: str, count: int, out_dir: Path, seed: int, size: int, layout: str) -> None:
    """Write synthetic studies with exact ground truth (DICOM/PNG + manifest)."""
    from workbench.data.phantoms import write_cxr_phantoms, write_fundus_phantoms

    if kind == "cxr":
        written = write_cxr_phantoms(out_dir, count, seed=seed, size=size)
    else:
        written = write_fundus_phantoms(out_dir, count, seed=seed, size=size, layout=layout)
    click.echo(str(written))


@hookimpl
def workbench_add_commands(cli: Any) -> None:
    """Add ``workbench phantoms``."""
    cli.add_command(phantoms_command)
