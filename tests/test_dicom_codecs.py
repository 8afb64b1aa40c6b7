"""Compressed DICOM: every compressed transfer syntax of pydicom's test files decodes, equal to its uncompressed twin.

The decoders are pydicom's plugins installed as dependencies (pylibjpeg-libjpeg,
-openjpeg, -rle). Files come from pydicom's own test data (``pydicom.data``;
the larger ones from the ``pydicom-data`` package, read offline); a row whose
file is not installed is skipped, never downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from workbench.data.readers import read_image
from workbench.errors import ImageReadError


def pydicom_file(name: str) -> Path:
    """A pydicom test file, or skip the test when the installed test data lack it (no download)."""
    found = get_testdata_file(name, download=False)
    if found is None:
        pytest.skip(f"{name} is not installed (it ships in the pydicom-data package)")
    return Path(found)


LOSSLESS_SYNTAXES = (JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, RLELossless)

# compressed file, transfer syntax, uncompressed (or losslessly compressed) twin, frame, tolerance: None = equal pixels; a number = the
# largest mean absolute difference of stored values, as a fraction of the twin's value range (lossy codecs).
CASES = [
    pytest.param("SC_rgb_jpeg_dcmtk.dcm", JPEGBaseline8Bit, "SC_rgb.dcm", None, 0.01, id="jpeg-baseline-rgb"),
    pytest.param("JPGExtended.dcm", JPEGExtended12Bit, "JPEG-LL.dcm", None, 0.02, id="jpeg-extended-12bit-nm"),
    pytest.param("SC_rgb_jpeg_gdcm.dcm", JPEGLosslessSV1, "SC_rgb.dcm", None, None, id="jpeg-lossless-sv1-rgb"),
    pytest.param("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless, "MR_small.dcm", None, None, id="jpeg-ls-lossless-mr"),
    pytest.param("emri_small_jpeg_ls_lossless.dcm", JPEGLSLossless, "emri_small.dcm", 3, None, id="jpeg-ls-lossless-multiframe"),
    pytest.param("SC_rgb_jls_lossy_line.dcm", JPEGLSNearLossless, "SC_rgb.dcm", None, 0.01, id="jpeg-ls-near-lossless-rgb"),
    pytest.param("MR_small_jp2klossless.dcm", JPEG2000Lossless, "MR_small.dcm", None, None, id="j2k-lossless-mr"),
    pytest.param("US1_J2KR.dcm", JPEG2000Lossless, "US1_UNCR.dcm", None, None, id="j2k-lossless-us-rgb"),
    pytest.param("RG3_J2KR.dcm", JPEG2000Lossless, "RG3_UNCR.dcm", None, None, id="j2k-lossless-cr"),
    pytest.param("RG1_J2KR.dcm", JPEG2000Lossless, "RG1_UNCR.dcm", None, None, id="j2k-lossless-cr-16bit", marks=pytest.mark.slow),
    pytest.param("JPEG2000.dcm", JPEG2000, "JPEG-LL.dcm", None, 0.02, id="j2k-lossy-nm"),
    pytest.param("RG3_J2KI.dcm", JPEG2000, "RG3_UNCI.dcm", None, 0.02, id="j2k-lossy-cr"),
    pytest.param("693_J2KI.dcm", JPEG2000, "693_UNCI.dcm", None, 0.02, id="j2k-lossy-ct"),
    pytest.param("MR_small_RLE.dcm", RLELossless, "MR_small.dcm", None, None, id="rle-mr"),
    pytest.param("SC_rgb_rle_16bit.dcm", RLELossless, "SC_rgb_16bit.dcm", None, None, id="rle-rgb-16bit"),
    pytest.param("emri_small_RLE.dcm", RLELossless, "emri_small.dcm", 3, None, id="rle-multiframe"),
]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("compressed, syntax, twin, frame, tolerance", CASES)
def test_compressed_dicom_decodes_like_its_uncompressed_twin(compressed, syntax, twin, frame, tolerance):
    compressed_path, twin_path = pydicom_file(compressed), pydicom_file(twin)
    assert pydicom.dcmread(compressed_path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    twin_syntax = pydicom.dcmread(twin_path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert not twin_syntax.is_compressed or twin_syntax in LOSSLESS_SYNTAXES  # NEMA's NM1 ships only as JPEG Lossless
    decoded, meta = read_image(compressed_path, frame=frame, intensity="stored")
    reference, _ = read_image(twin_path, frame=frame, intensity="stored")
    assert decoded.shape == reference.shape and meta["format"] == "dicom"
    if tolerance is None:
        np.testing.assert_array_equal(decoded, reference)
        unit, _ = read_image(compressed_path, frame=frame)
        np.testing.assert_array_equal(unit, read_image(twin_path, frame=frame)[0])
    else:
        value_range = float(reference.max() - reference.min())
        mean_error = float(np.abs(decoded - reference).mean())
        assert 0 < value_range and mean_error <= tolerance * value_range, (mean_error, value_range)
        # NM1 holds little more than noise in a 278-value range, so lossy copies correlate at about 0.95 only.
        assert np.corrcoef(decoded.ravel(), reference.ravel())[0, 1] > 0.9


def test_jpeg_lossless_process_14_radiograph_decodes():
    """The syntax real DX/CR exports use (NEMA's NM1 JPEG Lossless): decoded, finite, in [0, 1]."""
    array, meta = read_image(pydicom_file("JPEG-LL.dcm"))
    stored, _ = read_image(pydicom_file("JPEG-LL.dcm"), intensity="stored")
    assert array.shape == (1, 1024, 256) and meta["modality"] == "NM"
    assert 0.0 <= array.min() < array.max() <= 1.0
    assert stored.dtype == np.float32 and float(stored.max()) - float(stored.min()) == 278.0


def test_every_compressed_syntax_of_the_pydicom_test_files_has_a_decoder():
    """For each compressed transfer syntax in pydicom's test files, its smallest file decodes.

    Some test files are broken on purpose (JPEG-lossy.dcm, *_too_short.dcm), so one
    decodable file per syntax is what shows the decoder is there.
    """
    by_syntax: dict[str, list[tuple[int, Path]]] = {}
    # The default pattern: a pattern such as "*.dcm" makes pydicom try to download every file it knows of.
    for name in (name for name in get_testdata_files() if name.endswith(".dcm")):
        try:
            header = pydicom.dcmread(name, stop_before_pixels=True)
            syntax = header.file_meta.TransferSyntaxUID
        except Exception:  # noqa: BLE001 - files without meta or with broken headers are not about codecs
            continue
        if syntax.is_compressed and "PixelData" in pydicom.dcmread(name, specific_tags=["PixelData"]):
            by_syntax.setdefault(str(syntax), []).append((Path(name).stat().st_size, Path(name)))
    assert {JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, JPEG2000, RLELossless} <= set(by_syntax)
    undecoded = {}
    for syntax, files in sorted(by_syntax.items()):
        errors = []
        for _, path in sorted(files)[:3]:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            frame = 0 if int(header.get("NumberOfFrames") or 1) > 1 else None
            try:
                read_image(path, frame=frame)
                break
            except ImageReadError as error:
                errors.append(str(error))
        else:
            undecoded[pydicom.uid.UID(syntax).name] = errors
    assert not undecoded, undecoded
