"""Image readers: values, rows-first orientation across formats, and refusal of bad files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from monai.data import PILReader, PydicomReader
from monai.transforms import LoadImage
from PIL import Image
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from workbench.data.readers import LoadWorkbenchImaged, read_image
from workbench.errors import ImageReadError


def l_shape() -> np.ndarray:
    """A (40, 60) uint8 picture that changes under any transpose or flip."""
    picture = np.zeros((40, 60), dtype=np.uint8)
    picture[5:35, 5:12] = 200  # vertical bar on the left
    picture[28:35, 5:50] = 120  # horizontal foot at the bottom
    picture[0, 59] = 255  # top-right marker
    return picture


def write_dicom(path: Path, pixels: np.ndarray, **tags: object) -> Path:
    """Write ``pixels`` (rows, columns) as an uncompressed secondary-capture DICOM with extra ``tags``."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    bits = pixels.dtype.itemsize * 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelSpacing = [0.5, 0.25]
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.filterwarnings("ignore::UserWarning")  # MONAI warns about the geometry these plain files lack
def test_monai_default_readers_transpose_and_ours_do_not(tmp_path):
    """The trap we correct: MONAI's PIL and pydicom readers both return (columns, rows) by default."""
    picture = l_shape()
    png = tmp_path / "l.png"
    Image.fromarray(picture).save(png)
    dcm = write_dicom(tmp_path / "l.dcm", picture)
    for path, reader in ((png, PILReader()), (dcm, PydicomReader())):
        default = LoadImage(reader=reader, ensure_channel_first=True)(path)
        assert tuple(default.shape) == (1, 60, 40)
        np.testing.assert_array_equal(default[0].numpy().T, picture)
    from_png, _ = read_image(png)
    from_dcm, _ = read_image(dcm)
    assert from_png.shape == from_dcm.shape == (1, 40, 60)
    np.testing.assert_array_equal(from_png, from_dcm)
    np.testing.assert_allclose(from_png[0], picture / 255.0, atol=1e-7)
    assert from_png[0, 0, 59] == 1.0 and from_png[0, 39, 0] == 0.0


def test_nifti_reads_back_in_stored_index_order(tmp_path):
    picture = l_shape().astype(np.float32)
    nib.save(nib.Nifti1Image(picture, np.diag([0.8, 0.6, 1.0, 1.0])), tmp_path / "l.nii.gz")
    nib.save(nib.Nifti1Image(picture[..., None], np.eye(4)), tmp_path / "l3.nii")
    array, meta = read_image(tmp_path / "l.nii.gz")
    assert array.shape == (1, 40, 60) and meta["format"] == "nifti"
    np.testing.assert_array_equal(array[0], picture)  # NIfTI keeps its stored (physical) values
    assert meta["spacing"] == pytest.approx((0.8, 0.6))
    np.testing.assert_array_equal(read_image(tmp_path / "l3.nii")[0][0], picture)  # trailing z of 1 is dropped


def test_pil_formats_values_and_channels(tmp_path):
    picture = l_shape()
    rgb = np.stack([picture, 255 - picture, np.full_like(picture, 64)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(picture).save(tmp_path / "gray.tif")
    Image.fromarray(picture).save(tmp_path / "gray.gif")  # stored as a gray palette
    Image.fromarray(rgb).quantize(colors=8).save(tmp_path / "colour.gif")
    Image.fromarray(picture).save(tmp_path / "gray.jpg", quality=95)
    Image.fromarray(picture.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.bmp")
    frames = [Image.fromarray(picture), Image.fromarray(255 - picture), Image.fromarray(picture // 2)]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(picture).save(tmp_path / "dpi.png", dpi=(254, 127))

    array, meta = read_image(tmp_path / "rgb.png")
    assert array.shape == (3, 40, 60) and meta["photometric_interpretation"] == "RGB"
    np.testing.assert_allclose(array, np.moveaxis(rgb, -1, 0) / 255.0, atol=1e-7)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png")[0], array)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.bmp")[0], array)
    for name in ("gray.tif", "gray.gif", "gray16.png"):
        gray, _ = read_image(tmp_path / name)
        assert gray.shape == (1, 40, 60), name
        np.testing.assert_allclose(gray[0], picture / 255.0, atol=1e-6, err_msg=name)
    animated, animated_meta = read_image(tmp_path / "animated.gif")
    np.testing.assert_allclose(animated[0], picture / 255.0, atol=1e-6)  # the first frame
    assert animated_meta["frames"] == 3
    assert read_image(tmp_path / "dpi.png")[1]["spacing"] == pytest.approx((0.2, 0.1))  # rows 127 dpi, columns 254 dpi
    colour_gif, _ = read_image(tmp_path / "colour.gif")
    assert colour_gif.shape == (3, 40, 60)
    jpeg, _ = read_image(tmp_path / "gray.jpg")
    assert jpeg.shape == (1, 40, 60) and np.abs(jpeg[0] - picture / 255.0).mean() < 0.01  # lossy
    assert jpeg[0, 20, 8] > 0.7 and jpeg[0, 10, 40] < 0.05  # bar bright, background dark: not transposed
    stored, _ = read_image(tmp_path / "gray.tif", intensity="stored")
    np.testing.assert_array_equal(stored[0], picture)
    assert read_image(tmp_path / "rgb.png", ensure_channel_first=False)[0].shape == (40, 60, 3)
    assert read_image(tmp_path / "gray.tif", ensure_channel_first=False)[0].shape == (40, 60)


def test_dicom_rescale_without_window_uses_the_modality_range(tmp_path):
    stored = np.array([[0, 1000], [2000, 4095]], dtype=np.uint16)
    path = write_dicom(tmp_path / "ct.dcm", stored, BitsStored=12, HighBit=11, RescaleSlope=2, RescaleIntercept=-1000)
    array, meta = read_image(path)
    # Modality output 2*v - 1000 spans [-1000, 7190] for 12-bit stored values.
    np.testing.assert_allclose(array[0], (2.0 * stored - 1000 + 1000) / 8190.0, atol=1e-6)
    assert meta["intensity_range"] == (-1000.0, 7190.0) and meta["voi"] is None
    hounsfield, _ = read_image(path, intensity="stored")
    np.testing.assert_array_equal(hounsfield[0], 2.0 * stored - 1000)
    assert meta["spacing"] == (0.5, 0.25) and meta["modality"] == "OT"


def test_dicom_window_first_value_and_monochrome1(tmp_path):
    stored = np.array([[0, 100, 150], [200, 300, 4000]], dtype=np.uint16)
    windowed = write_dicom(
        tmp_path / "w.dcm", stored, BitsStored=12, HighBit=11, RescaleSlope=1, RescaleIntercept=0,
        WindowCenter=[150.5, 2000], WindowWidth=[101, 4000],
    )
    array, meta = read_image(windowed)
    # LINEAR window (PS3.3 C.11.2.1.2): c=150.5, w=101 maps 100 -> 0 and 201 -> 1, linear in between.
    expected = np.clip((stored - (150.5 - 0.5)) / 100.0 + 0.5, 0, 1)
    np.testing.assert_allclose(array[0], expected, atol=1e-6)
    assert meta["window"] == (150.5, 101.0) and meta["voi"] == "window"
    inverted = write_dicom(tmp_path / "m1.dcm", stored, BitsStored=12, HighBit=11, PhotometricInterpretation="MONOCHROME1")
    array_m1, meta_m1 = read_image(inverted)
    np.testing.assert_allclose(array_m1[0], 1.0 - stored / 4095.0, atol=1e-6)
    assert meta_m1["photometric_interpretation"] == "MONOCHROME1"
    assert array_m1[0, 0, 0] == 1.0  # stored 0 is white in MONOCHROME1: bright = dense


def test_dicom_multiframe_needs_a_frame(tmp_path):
    frames = np.stack([np.full((4, 6), value, dtype=np.uint8) for value in (10, 20, 30)])
    path = write_dicom(tmp_path / "cine.dcm", frames)
    with pytest.raises(ImageReadError, match=r"multi-frame DICOM \(3 frames\)"):
        read_image(path)
    array, meta = read_image(path, frame=1)
    assert array.shape == (1, 4, 6) and meta["frames"] == 3
    np.testing.assert_allclose(array, 20 / 255.0, atol=1e-7)
    with pytest.raises(ImageReadError, match="frame 5 requested"):
        read_image(path, frame=5)


@pytest.mark.parametrize(
    "name, make, reason",
    [
        ("missing.png", None, "file not found"),
        ("notes.txt", lambda p: p.write_text("hello"), "unsupported file type .txt"),
        ("empty.png", lambda p: p.write_bytes(b""), "empty file"),
        ("noise.png", lambda p: p.write_bytes(np.random.default_rng(0).bytes(300)), "cannot read png"),
        ("noise.dcm", lambda p: p.write_bytes(np.random.default_rng(1).bytes(300)), "cannot read dicom"),
        ("noise.nii.gz", lambda p: p.write_bytes(b"\x1f\x8b" + bytes(40)), "cannot read nifti"),
    ],
)
def test_bad_files_are_refused_with_the_file_named(tmp_path, name, make, reason):
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(ImageReadError, match=reason) as caught:
        read_image(path)
    assert name in str(caught.value)


def test_truncated_and_structurally_bad_files_are_refused(tmp_path):
    Image.fromarray(l_shape()).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    whole = write_dicom(tmp_path / "whole.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    dicom_bytes = whole.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(dicom_bytes[: len(dicom_bytes) - 3000])
    write_dicom(tmp_path / "zero.dcm", np.zeros((2, 2), dtype=np.uint8), Rows=0)
    no_pixels = pydicom.dcmread(whole)
    del no_pixels.PixelData
    no_pixels.save_as(tmp_path / "nopixels.dcm")
    volume = np.zeros((8, 8, 5), dtype=np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "volume.nii.gz")
    cases = {"cut.png": "truncated|cannot read png", "cut.dcm": "cannot", "zero.dcm": "zero-size",
             "nopixels.dcm": "no pixel data", "volume.nii.gz": "expected a 2-D image"}
    for name, reason in cases.items():
        with pytest.raises(ImageReadError, match=reason) as caught:
            read_image(tmp_path / name)
        assert name in str(caught.value), name


def test_compressed_dicom_without_a_working_decoder_is_refused(tmp_path):
    path = write_dicom(tmp_path / "jls.dcm", np.zeros((8, 8), dtype=np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8 not a JPEG-LS stream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="cannot decode compressed transfer syntax JPEG-LS Lossless") as caught:
        read_image(path)
    assert "jls.dcm" in str(caught.value)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_pixels_are_refused(tmp_path, bad_value):
    values = np.ones((6, 7), dtype=np.float32)
    values[2, 3] = bad_value
    nib.save(nib.Nifti1Image(values, np.eye(4)), tmp_path / "bad.nii.gz")
    with pytest.raises(ImageReadError, match="1 NaN/Inf pixel"):
        read_image(tmp_path / "bad.nii.gz")


@pytest.mark.timeout(120)
def test_every_pydicom_test_file_is_read_or_refused_by_name():
    read, refused = [], []
    # pydicom's bundled files; the pydicom-data package adds large radiographs whose codecs tests/test_dicom_codecs.py covers.
    bundled = [path for path in get_testdata_files() if Path(path).parent == Path(pydicom.data.__file__).parent / "test_files"]
    for path in bundled:
        name = Path(path).name
        try:
            array, _ = read_image(path)
        except ImageReadError as error:
            assert name in str(error)
            refused.append(name)
        else:
            assert array.ndim == 3 and array.shape[0] in (1, 3) and np.isfinite(array).all(), name
            assert 0.0 <= array.min() and array.max() <= 1.0, name
            read.append(name)
    print(f"pydicom test files: {len(read)} read, {len(refused)} refused")
    assert {"CT_small.dcm", "MR_small.dcm", "examples_palette.dcm", "SC_rgb_rle.dcm", "MR_small_RLE.dcm"} <= set(read)
    assert {"rtplan.dcm", "MR_truncated.dcm", "rtdose.dcm", "no_meta.dcm"} <= set(refused)


def test_load_workbench_imaged_reads_each_key_in_its_mode(tmp_path):
    picture = l_shape()
    Image.fromarray(picture).save(tmp_path / "image.png")
    labels = (picture > 0).astype(np.uint8) * 3
    Image.fromarray(labels).save(tmp_path / "mask.png")
    load = LoadWorkbenchImaged(["image", "mask", "fov"], allow_missing_keys=True, intensity=("unit", "stored", "stored"))
    record = load({"image": str(tmp_path / "image.png"), "mask": str(tmp_path / "mask.png"), "report": "x"})
    assert record["image"].shape == record["mask"].shape == (1, 40, 60)
    assert record["image"].max() == 1.0 and set(np.unique(record["mask"])) == {0.0, 3.0}
    assert record["image_meta"]["source"].endswith("image.png") and record["report"] == "x"
    with pytest.raises(ImageReadError, match="file not found"):
        LoadWorkbenchImaged("image")({"image": str(tmp_path / "gone.png")})
