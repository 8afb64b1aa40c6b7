"""Subprocess worker of tests/test_fuzz_inputs.py: read fuzzed files, one JSON line per outcome.

Reads case file paths from stdin (one per line). For each it prints
``{"case": name, "start": true}`` before touching the file (so the parent
knows which case a crash or hang belongs to) and then one outcome line:

- ``read``: :func:`~workbench.data.readers.read_image` gave an array and the
  manifest path (read_manifest -> build_dataset -> LoadWorkbenchImaged) gave
  the same record;
- ``refused``: both refused with a workbench error that names the file;
- ``other``: anything else (another exception type, an error that does not
  name the file, the two paths disagreeing), with the details.

Run as ``python -m tests.helpers.fuzz_worker [WARM-UP FILE...]`` from the repository root.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch


def _read_direct(path: Path) -> tuple[str, str]:
    from workbench.data.readers import read_image
    from workbench.errors import WorkbenchError

    try:
        array, _ = read_image(path)
    except WorkbenchError as error:
        return ("refused", str(error)) if path.name in str(error) else ("other", f"error without the file name: {error}")
    except Exception as error:  # noqa: BLE001 - the point: nothing but the workbench's errors may escape
        return "other", f"{type(error).__name__}: {error}"
    return "read", f"shape {tuple(array.shape)}"


def _read_via_manifest(path: Path, folder: Path) -> tuple[str, str]:
    from workbench.data.loaders import build_dataset
    from workbench.data.manifests import read_manifest, write_manifest
    from workbench.data.readers import LoadWorkbenchImaged

    manifest = write_manifest([{"id": path.stem, "image": str(path)}], folder / "case.jsonl")
    try:
        records = read_manifest(manifest)
        dataset = build_dataset(records, LoadWorkbenchImaged("image"))
        item = dataset[0] if len(dataset) else None
    except Exception as error:  # noqa: BLE001
        return "other", f"manifest path raised {type(error).__name__}: {error}"
    if item is not None:
        return "read", "loaded"
    rows = dataset.skipped.rows  # (id, file, reason)
    named = any(path.name in f"{file}: {reason}" for _, file, reason in rows)
    return ("refused", rows[0][2]) if named else ("other", f"skipped without the file name: {rows}")


def _outcome(path: Path, folder: Path) -> dict[str, Any]:
    direct, detail = _read_direct(path)
    via_manifest, manifest_detail = _read_via_manifest(path, folder)
    if direct != via_manifest and "other" not in (direct, via_manifest):
        return {"outcome": "other", "detail": f"read_image {direct} ({detail}) but the manifest path {via_manifest} ({manifest_detail})"}
    if via_manifest == "other":
        return {"outcome": "other", "detail": manifest_detail}
    return {"outcome": direct, "detail": detail}


def main() -> None:
    """Serve cases from stdin until it closes."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)  # the readers log ignored VOI windows and the like; outcomes are what counts
    with tempfile.TemporaryDirectory() as scratch:
        # Imports and MONAI's set-up happen on first use: warm up on the unmutated files (argv) before any timed case.
        for warm_up in sys.argv[1:]:
            _outcome(Path(warm_up), Path(scratch))
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            path = Path(line.strip())
            if not line.strip():
                continue
            print(json.dumps({"case": path.name, "start": True}), flush=True)
            print(json.dumps({"case": path.name, **_outcome(path, Path(scratch))}), flush=True)


if __name__ == "__main__":
    main()
