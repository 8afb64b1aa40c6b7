"""Fuzzed image files: every outcome is an image or the workbench's own error naming the file.

Real files (pydicom's test files in several transfer syntaxes, and a PNG, a
JPEG, a GIF and two NIfTI files written here) are mutated with a fixed seed:
truncation, random byte flips, DICOM header edits (``Rows = 0``,
``BitsAllocated = 7``, a frame count the pixel data lacks, ...) and a swapped
transfer syntax UID. Each case goes through ``read_image`` and through the
manifest path jobs use (``read_manifest`` -> ``build_dataset`` ->
``LoadWorkbenchImaged``) in a subprocess (:mod:`tests.helpers.fuzz_worker`),
so a decoder that segfaults or hangs is caught and reported by case, not
taken for a test-run crash. Each case has 5 seconds.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CASE_SECONDS = 5.0
DICOM_SOURCES = ("MR_small.dcm", "CT_small.dcm", "SC_rgb_rle.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                 "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_gdcm.dcm", "JPGExtended.dcm", "examples_palette.dcm")
SWAPPED_SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
                    JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, RLELossless)
# (keyword, value) header edits; a value None deletes the element.
HEADER_EDITS = (("Rows", 0), ("Columns", 0), ("BitsAllocated", 7), ("BitsStored", 20), ("HighBit", 40), ("SamplesPerPixel", 3),
                ("SamplesPerPixel", 0), ("PhotometricInterpretation", "PALETTE COLOR"), ("PhotometricInterpretation", "YBR_FULL"),
                ("NumberOfFrames", 4), ("PixelRepresentation", 1), ("Rows", 4096), ("Columns", 1), ("WindowWidth", 0),
                ("RescaleSlope", 0), ("PlanarConfiguration", 1), ("BitsAllocated", None), ("Rows", None), ("PixelData", None))


def _base_files(folder: Path) -> list[Path]:
    """The files mutated: pydicom's (those installed) and one of each other format written here."""
    found = [Path(path) for path in (get_testdata_file(name, download=False) for name in DICOM_SOURCES) if path]
    picture = np.zeros((40, 60), dtype=np.uint8)
    picture[5:35, 5:12], picture[28:35, 5:50] = 200, 120
    rgb = np.stack([picture, picture[::-1], np.full_like(picture, 90)], axis=-1)
    Image.fromarray(picture).save(folder / "gray.png")
    Image.fromarray(rgb).save(folder / "colour.png")
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=85)
    Image.fromarray(picture).convert("P").save(folder / "palette.gif")
    nib.save(nib.Nifti1Image(picture.astype(np.int16), np.eye(4)), folder / "slice.nii")
    nib.save(nib.Nifti1Image(picture.astype(np.float32) / 255, np.eye(4)), folder / "slice.nii.gz")
    return found + [folder / name for name in ("gray.png", "colour.png", "photo.jpg", "palette.gif", "slice.nii", "slice.nii.gz")]


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def _header_edit(source: Path, target: Path, rng: np.random.Generator) -> str | None:
    """Write ``source`` with one header element changed (or its transfer syntax swapped); ``None`` if pydicom cannot write it."""
    ds = pydicom.dcmread(source)
    if rng.random() < 0.3:
        syntax = SWAPPED_SYNTAXES[rng.integers(len(SWAPPED_SYNTAXES))]
        original = ds.file_meta.TransferSyntaxUID
        ds.file_meta.TransferSyntaxUID = syntax
        # Only the UID changes: the data set keeps its original encoding, as a mislabelled file would.
        what = f"syntax {original.name} -> {syntax.name}"
        try:
            pydicom.dcmwrite(target, ds, enforce_file_format=False, implicit_vr=original.is_implicit_VR,
                             little_endian=original.is_little_endian)
        except Exception:  # noqa: BLE001 - some combinations cannot be written; the case is dropped
            return None
        return what
    keyword, value = HEADER_EDITS[rng.integers(len(HEADER_EDITS))]
    if value is None:
        if keyword not in ds:
            return None
        delattr(ds, keyword)
    else:
        setattr(ds, keyword, value)
    try:
        ds.save_as(target, enforce_file_format=False)
    except Exception:  # noqa: BLE001
        return None
    return f"{keyword} = {value}" if value is not None else f"no {keyword}"


def make_cases(folder: Path, bases: list[Path], count: int, seed: int) -> dict[str, str]:
    """Write ``count`` mutations of ``bases`` into ``folder``; returns file name -> what was done."""
    rng = np.random.default_rng(seed)
    cases: dict[str, str] = {}
    while len(cases) < count:
        source = bases[rng.integers(len(bases))]
        target = folder / f"case{len(cases):04d}_{source.name.replace('.', '_')}{_suffix(source)}"
        data = source.read_bytes()
        kind = rng.choice(["truncate", "flip", "header"] if source.suffix == ".dcm" else ["truncate", "flip"])
        if kind == "truncate":
            keep = int(rng.integers(0, len(data)))
            target.write_bytes(data[:keep])
            what = f"truncated to {keep} of {len(data)} bytes"
        elif kind == "flip":
            mutable = bytearray(data)
            flips = int(rng.integers(1, 17))
            # Half the flips land in the first 1 KB, where the headers are.
            positions = [int(rng.integers(0, min(len(data), 1024) if rng.random() < 0.5 else len(data))) for _ in range(flips)]
            for position in positions:
                mutable[position] ^= int(rng.integers(1, 256))
            target.write_bytes(bytes(mutable))
            what = f"{flips} byte(s) flipped"
        else:
            edited = _header_edit(source, target, rng)
            if edited is None:
                continue
            what = edited
        cases[target.name] = f"{source.name}: {what}"
    return cases


def _reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def run_cases(paths: list[Path], warm_up: list[Path]) -> dict[str, dict]:
    """Run each file through the worker; a hang (over 5 s) or a crash is recorded for its case and the worker restarted.

    ``warm_up`` files are read before the first timed case (first use imports decoders and builds MONAI's loader).
    """
    results: dict[str, dict] = {}
    pending = list(paths)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    while pending:
        worker = subprocess.Popen([sys.executable, "-m", "tests.helpers.fuzz_worker", *map(str, warm_up)], cwd=REPO_ROOT, env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(worker.stdout, lines), daemon=True).start()
        assert json.loads(lines.get(timeout=300)) == {"ready": True}
        worker.stdin.write("".join(f"{path}\n" for path in pending))
        worker.stdin.close()
        current = None
        while True:
            try:
                line = lines.get(timeout=CASE_SECONDS)
            except queue.Empty:
                worker.kill()
                worker.wait()
                if current is not None:
                    results[current] = {"outcome": "hang", "detail": f"no answer in {CASE_SECONDS:g} s"}
                break  # with no case started the worker was only slow to exit (or to start the next case)
            if line is None:
                code = worker.wait()
                if current is not None:
                    results[current] = {"outcome": "crash", "detail": f"worker exited with status {code}"}
                break
            message = json.loads(line)
            if message.get("start"):
                current = message["case"]
            else:
                results[message.pop("case")] = message
                current = None
        remaining = [path for path in pending if path.name not in results]
        if len(remaining) == len(pending):  # a worker that answers nothing at all: blame the case it was given first
            results[pending[0].name] = {"outcome": "hang", "detail": "the worker stopped before starting it"}
            remaining = pending[1:]
        pending = remaining
    return results


def fuzz(tmp_path: Path, count: int, seed: int) -> None:
    bases = _base_files(tmp_path)
    cases = make_cases(tmp_path, bases, count, seed)
    results = run_cases([tmp_path / name for name in cases], warm_up=bases)
    counts = Counter(result["outcome"] for result in results.values())
    print(f"fuzzed inputs ({count} cases, seed {seed}): {counts.get('read', 0)} read, {counts.get('refused', 0)} refused, "
          f"{sum(value for key, value in counts.items() if key not in ('read', 'refused'))} other")
    bad = {name: f"{cases[name]} -> {result}" for name, result in results.items() if result["outcome"] not in ("read", "refused")}
    assert not bad, "\n".join(f"{name}: {text}" for name, text in sorted(bad.items()))
    assert len(results) == count and counts["read"] > 0 and counts["refused"] > 0


@pytest.mark.timeout(300)
def test_fuzzed_files_are_read_or_refused_by_name(tmp_path):
    fuzz(tmp_path, count=200, seed=2024)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_many_fuzzed_files_are_read_or_refused_by_name(tmp_path):
    fuzz(tmp_path, count=2000, seed=7)
