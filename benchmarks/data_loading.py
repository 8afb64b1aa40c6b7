"""Images/s for chest-phantom DICOMs: read every step vs. MONAI's memory and disk caches.

Run: ``workbench bench data_loading [--tiny]`` (or ``.venv/bin/python benchmarks/data_loading.py [--n 200] [--data DIR] [--epochs 3] [--tiny]``).

Three ways through the same pipeline (``LoadWorkbenchImaged`` -> ``ValidateImaged``
-> ``RandFlipd``) and the same loader (batch 16, shuffled):

- ``no_cache``: MONAI ``Dataset``; every step decodes the DICOM (pydicom, modality
  LUT, VOI window) again.
- ``memory``: ``CacheDataset``; the deterministic part runs once while the cache
  is built (timed separately), each epoch runs only the random flip.
- ``disk``: ``PersistentDataset``; the first epoch writes the cache (timed
  separately), later epochs read it back.

Each reports the median images/s over the measured epochs. Results go to
``benchmarks/results/data_loading.json``. ``--tiny``: 8 phantoms, one measured epoch (a smoke test).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import monai
import pydicom
from monai.transforms import Compose, RandFlipd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from workbench.data.loaders import build_dataset, build_loader  # noqa: E402
from workbench.data.manifests import read_manifest  # noqa: E402
from workbench.data.readers import LoadWorkbenchImaged  # noqa: E402
from workbench.data.skipped import SkippedRecords  # noqa: E402
from workbench.provenance import Provenance  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "data_loading.json"
PHANTOM_SEED, PHANTOM_SIZE = 0, 256
BENCHMARK = {"name": "data_loading", "cpu_budget_minutes": 3, "configs": [],
             "measures": "images/s through the DICOM pipeline: no cache vs MONAI's memory and disk caches"}


def pipeline() -> Compose:
    """The measured transforms: a DICOM read, the image checks and one random flip."""
    from workbench.data.loaders import ValidateImaged

    return Compose([LoadWorkbenchImaged("image"), ValidateImaged("image", expected_channels=1), RandFlipd("image", prob=0.5, spatial_axis=1)])


def phantom_records(data_dir: Path, n: int) -> list[dict[str, Any]]:
    """Write ``n`` chest phantoms (DICOM only) in ``data_dir`` unless already there; return the records."""
    from workbench.data.phantoms import write_cxr_phantoms

    manifest = data_dir / "manifest.jsonl"
    if not manifest.exists():
        write_cxr_phantoms(data_dir, n, seed=PHANTOM_SEED, size=PHANTOM_SIZE, formats=("dcm",))
    records = read_manifest(manifest, require=("image",))
    if len(records) < n:
        raise SystemExit(f"{manifest} holds {len(records)} records, fewer than --n {n}; use another --data folder")
    return records[:n]


def time_epochs(dataset: Any, epochs: int, batch_size: int, workers: int, first_epoch: int = 0) -> list[dict[str, float]]:
    """Run ``epochs`` full passes; return images, seconds and images/s per epoch."""
    loader = build_loader(dataset, batch_size=batch_size, shuffle=True, seed=0, num_workers=workers)
    measured = []
    for epoch in range(first_epoch, first_epoch + epochs):
        loader.set_epoch(epoch)
        images, start = 0, time.perf_counter()
        for batch in loader:
            if batch is not None:
                images += int(batch["image"].shape[0])
        seconds = time.perf_counter() - start
        measured.append({"images": images, "seconds": round(seconds, 4), "images_per_s": round(images / seconds, 2)})
    return measured


def median_rate(epochs: list[dict[str, float]]) -> float:
    return round(statistics.median(epoch["images_per_s"] for epoch in epochs), 2)


def measure(n: int, data_dir: Path, epochs: int, batch_size: int, workers: int) -> dict[str, Any]:
    """Measure the three modes on ``n`` phantoms in ``data_dir``; return the results dict."""
    records = phantom_records(data_dir, n)
    skipped = SkippedRecords()
    results: dict[str, Any] = {}

    dataset = build_dataset(records, pipeline(), cache="none", skipped=skipped)
    results["no_cache"] = {"epochs": time_epochs(dataset, epochs, batch_size, workers)}

    start = time.perf_counter()
    dataset = build_dataset(records, pipeline(), cache="memory", skipped=skipped, num_workers=max(workers, 1))
    build_seconds = time.perf_counter() - start
    results["memory"] = {"cache_build_seconds": round(build_seconds, 3), "epochs": time_epochs(dataset, epochs, batch_size, workers)}

    with tempfile.TemporaryDirectory(prefix="wb-persistent-") as cache_dir:
        dataset = build_dataset(records, pipeline(), cache="disk", cache_dir=cache_dir, skipped=skipped)
        (fill,) = time_epochs(dataset, 1, batch_size, workers)
        cache_bytes = sum(path.stat().st_size for path in Path(cache_dir).glob("*.pt"))
        results["disk"] = {
            "cache_fill_epoch": fill,
            "cache_megabytes": round(cache_bytes / 2**20, 1),
            "epochs": time_epochs(dataset, epochs, batch_size, workers, first_epoch=1),
        }

    for mode in ("no_cache", "memory", "disk"):
        results[mode]["median_images_per_s"] = median_rate(results[mode]["epochs"])
    baseline = results["no_cache"]["median_images_per_s"]
    return {
        "benchmark": "data_loading",
        "settings": {"n": n, "image_size": 256, "format": "DICOM (12-bit, VOI window)", "batch_size": batch_size,
                     "epochs_measured": epochs, "num_workers": workers, "pipeline": "LoadWorkbenchImaged -> ValidateImaged -> RandFlipd"},
        "results": results,
        "ratios": {
            "memory_over_no_cache": round(results["memory"]["median_images_per_s"] / baseline, 2),
            "disk_over_no_cache": round(results["disk"]["median_images_per_s"] / baseline, 2),
        },
        "skipped_records": len(skipped),
        "libraries": {"monai": monai.__version__, "pydicom": pydicom.__version__},
    }


def run(out_path: Path, tiny: bool = False, *, n: int = 200, data: Path | None = None, epochs: int = 3, batch_size: int = 16,
        workers: int = 0, **_: object) -> dict[str, Any]:
    """Measure, write ``out_path`` with its provenance, print a summary (nothing is trained: ``models``/``store`` go unused)."""
    n, epochs, batch_size = (8, 1, 4) if tiny else (n, epochs, batch_size)
    provenance = Provenance("data_loading", tiny=tiny, device="cpu")
    provenance.phantoms("phantom-cxr", n, PHANTOM_SEED, PHANTOM_SIZE, used_for="DICOM reads (the first n of the set)")
    if data is not None:
        report = measure(n, data, epochs, batch_size, workers)
    else:
        with tempfile.TemporaryDirectory(prefix="wb-phantoms-") as data_dir:
            report = measure(n, Path(data_dir), epochs, batch_size, workers)
    provenance.write(out_path, report, scored_split=None)
    results = report["results"]
    print(f"{'mode':10s} {'images/s (median)':>18s}  extra")
    print(f"{'no_cache':10s} {results['no_cache']['median_images_per_s']:18.1f}")
    print(f"{'memory':10s} {results['memory']['median_images_per_s']:18.1f}  cache build {results['memory']['cache_build_seconds']:.2f} s")
    print(f"{'disk':10s} {results['disk']['median_images_per_s']:18.1f}  first (filling) epoch {results['disk']['cache_fill_epoch']['images_per_s']:.1f} images/s")
    print(f"ratios: {report['ratios']}  -> {out_path}")
    return report


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of chest phantoms (default 200)")
    parser.add_argument("--data", type=Path, default=None, help="phantom folder (written when empty; default a temp dir)")
    parser.add_argument("--epochs", type=int, default=3, help="measured epochs per mode (default 3)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--tiny", action="store_true", help="8 phantoms, one measured epoch (a smoke test)")
    args = parser.parse_args(argv)
    run(args.out, args.tiny, n=args.n, data=args.data, epochs=args.epochs, batch_size=args.batch_size, workers=args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
