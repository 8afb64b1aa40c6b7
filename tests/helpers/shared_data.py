"""Where the shared real data (read in place, never copied into the repository) lives.

Looked for in order: ``$WORKBENCH_SHARED_DATA``; ``../shared/data`` next to the
repository; and, for a fresh ``git clone`` of a local checkout (how CI runs),
``../shared/data`` next to the checkout it was cloned from.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _origin_checkout() -> Path | None:
    try:
        url = subprocess.run(["git", "config", "--get", "remote.origin.url"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(url.removeprefix("file://")) if url and "://" not in url.removeprefix("file://") else None
    return path if path is not None and path.is_dir() else None


def shared_data_dir() -> Path | None:
    """The shared data folder, or ``None`` when this machine has none."""
    candidates = [Path(os.environ["WORKBENCH_SHARED_DATA"])] if os.environ.get("WORKBENCH_SHARED_DATA") else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    origin = _origin_checkout()
    if origin is not None:
        candidates.append(origin.resolve().parent / "shared" / "data")
    return next((path for path in candidates if path.is_dir()), None)


_SHARED = shared_data_dir()
CHASE_DB1: Path = (_SHARED / "CHASE_DB1") if _SHARED is not None else REPO_ROOT / "missing-shared-data" / "CHASE_DB1"
# The real-data tests need the shared CHASE_DB1 files; a machine without them (a user's clone) runs the rest.
requires_chase_db1 = pytest.mark.skipif(not (CHASE_DB1 / "Image_11L_1stHO.png").is_file(),
                                        reason="CHASE_DB1 not found: set WORKBENCH_SHARED_DATA to the shared data folder")


def _shared(name: str) -> Path:
    return (_SHARED / name) if _SHARED is not None else REPO_ROOT / "missing-shared-data" / name


COVID_CHESTXRAY: Path = _shared("covid-chestxray")
TBX11K_SMALL: Path = _shared("tbx11k-small")
PEDIATRIC_CXR: Path = _shared("pediatric-cxr")
_HINT = "not found: set WORKBENCH_SHARED_DATA to the shared data folder"
requires_covid_chestxray = pytest.mark.skipif(not (COVID_CHESTXRAY / "metadata.csv").is_file(), reason=f"covid-chestxray {_HINT}")
requires_tbx11k = pytest.mark.skipif(not (TBX11K_SMALL / "classes.txt").is_file(), reason=f"tbx11k-small {_HINT}")
requires_pediatric_cxr = pytest.mark.skipif(not (PEDIATRIC_CXR / "NORMAL").is_dir(), reason=f"pediatric-cxr {_HINT}")
