"""Vessel mask outputs: PNGs, NIfTI in the source geometry, DICOM SEG read back with highdicom and pydicom."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import SegmentationStorage

from workbench.data.readers import read_image
from workbench.errors import DataError
from workbench_plugins.vessels.outputs import dicom_affine, write_mask_outputs

# pydicom ships these with the package (no download): 2-D single-frame CT and MR, and a tiny RGB secondary capture.
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
MR_SMALL = Path(get_testdata_file("MR_small.dcm"))
SC_RGB = CT_SMALL.parent / "SC_rgb_small_odd.dcm"


def _asymmetric_probability(height: int, width: int) -> np.ndarray:
    """A map whose transpose or flip differs from it: a ramp along the columns plus a bright top-left block."""
    probability = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1)) * 0.6
    probability[: height // 3, : width // 4] = 0.95
    return probability


def test_png_outputs_hold_the_probabilities_and_the_thresholded_mask(tmp_path):
    source = tmp_path / "fundus.png"
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(source)
    _, meta = read_image(source)
    probability = _asymmetric_probability(30, 50)
    written = write_mask_outputs(tmp_path / "out", "fundus", probability, 0.5, source, meta)
    assert set(written) == {"probability_png", "mask_png", "mask_nifti"}
    stored_probability = np.asarray(Image.open(written["probability_png"]))
    stored_mask = np.asarray(Image.open(written["mask_png"]))
    assert stored_probability.dtype == np.uint8 and stored_probability.shape == (30, 50)
    np.testing.assert_array_equal(stored_probability, np.round(probability * 255).astype(np.uint8))
    np.testing.assert_array_equal(stored_mask, np.where(probability > 0.5, 255, 0).astype(np.uint8))
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fundus_mask.nii.gz", "fundus_mask.png", "fundus_prob.png"]


def test_nifti_of_a_png_source_has_the_identity_affine_and_the_source_orientation(tmp_path):
    source = tmp_path / "fundus.png"
    picture = (_asymmetric_probability(24, 40) * 255).astype(np.uint8)
    Image.fromarray(picture).save(source)
    image, meta = read_image(source)
    written = write_mask_outputs(tmp_path, "fundus", image[0], 0.5, source, meta)
    nifti = nib.load(written["mask_nifti"])
    np.testing.assert_array_equal(nifti.affine, np.eye(4))
    expected = (image[0] > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), expected)
    mask_read, _ = read_image(written["mask_nifti"], intensity="stored", ensure_channel_first=False)
    np.testing.assert_array_equal(mask_read, expected)


@pytest.mark.parametrize("shape", [(20, 36), (20, 36, 1)])
def test_nifti_of_a_nifti_source_keeps_its_affine_and_header(tmp_path, shape):
    affine = np.array([[0.0, -0.7, 0.1, 12.0], [0.8, 0.0, 0.0, -30.0], [0.0, 0.05, 2.5, 4.0], [0.0, 0.0, 0.0, 1.0]])
    values = _asymmetric_probability(20, 36).reshape(shape) * 1000.0
    source_image = nib.Nifti1Image(values.astype(np.float32), affine)
    source_image.set_qform(affine, code=1)
    source_image.set_sform(affine, code=4)
    source = tmp_path / "scan.nii.gz"
    nib.save(source_image, source)
    image, meta = read_image(source)
    probability = image[0] / 1000.0
    written = write_mask_outputs(tmp_path / "out", "scan", probability, 0.3, source, meta)
    nifti = nib.load(written["mask_nifti"])
    np.testing.assert_allclose(nifti.affine, affine, atol=1e-6)
    assert nifti.shape == shape
    assert int(nifti.header["sform_code"]) == 4 and int(nifti.header["qform_code"]) == 1
    assert nifti.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(nifti.dataobj).reshape(20, 36), (probability > 0.3).astype(np.uint8))


@pytest.mark.parametrize("source", [CT_SMALL, MR_SMALL], ids=["CT_small", "MR_small"])
def test_dicom_seg_reads_back_equal_to_the_mask(tmp_path, source):
    image, meta = read_image(source)
    probability = np.clip(image[0], 0.0, 1.0)
    threshold = float(np.median(probability)) + 1e-3
    written = write_mask_outputs(tmp_path, "slice", probability, threshold, source, meta, vessel_kind="blood")
    mask = probability > threshold
    assert 0 < mask.sum() < mask.size
    source_dataset = pydicom.dcmread(source)

    seg = hd.seg.segread(written["dicom_seg"])
    assert seg.SOPClassUID == SegmentationStorage and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source_dataset.StudyInstanceUID
    description = seg.get_segment_description(1)
    assert description.segment_label == "Blood vessel"
    assert (description.segmented_property_category.value, description.segmented_property_category.scheme_designator) == ("91723000", "SCT")
    assert (description.segmented_property_type.value, description.segmented_property_type.scheme_designator) == ("59820001", "SCT")
    frames = seg.get_pixels_by_source_instance([source_dataset.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(frames[0, :, :, 0], mask.astype(frames.dtype))
    # pydicom alone decodes the same single bit-packed frame.
    np.testing.assert_array_equal(pydicom.dcmread(written["dicom_seg"]).pixel_array, mask.astype(np.uint8))


@pytest.mark.parametrize("source", [CT_SMALL, MR_SMALL], ids=["CT_small", "MR_small"])
def test_nifti_of_a_dicom_source_has_the_patient_geometry(tmp_path, source):
    image, meta = read_image(source)
    written = write_mask_outputs(tmp_path, "slice", np.clip(image[0], 0, 1), 0.5, source, meta)
    nifti = nib.load(written["mask_nifti"])
    assert nifti.shape == (*image.shape[1:], 1)
    np.testing.assert_array_equal(np.asarray(nifti.dataobj)[..., 0], (np.clip(image[0], 0, 1) > 0.5).astype(np.uint8))
    _assert_affine_matches_monai(source, nifti.affine)


def _assert_affine_matches_monai(source: Path, affine: np.ndarray) -> None:
    """MONAI's PydicomReader indexes (column, row): its first two affine columns are ours swapped."""
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_image = LoadImage(reader=PydicomReader(), image_only=True)(str(source))
    monai_affine = np.asarray(monai_image.affine, dtype=float)
    np.testing.assert_allclose(affine[:3, [1, 0, 3]], monai_affine[:3, [0, 1, 3]], atol=1e-4)


def test_dicom_affine_of_an_oblique_anisotropic_slice_matches_monai(tmp_path):
    dataset = pydicom.dcmread(CT_SMALL)
    angle = np.deg2rad(25.0)
    # DS values hold at most 16 characters: round, and use the rounded values below.
    cos, sin = round(float(np.cos(angle)), 8), round(float(np.sin(angle)), 8)
    dataset.ImageOrientationPatient = [cos, sin, 0.0, 0.0, 0.0, -1.0]
    dataset.PixelSpacing = [0.5, 0.8]
    dataset.ImagePositionPatient = [10.0, -20.0, 35.5]
    oblique = tmp_path / "oblique.dcm"
    dataset.save_as(oblique)
    affine, has_geometry = dicom_affine(pydicom.dcmread(oblique))
    assert has_geometry
    # Row index steps 0.5 mm along the column direction (0, 0, -1) LPS = (0, 0, -1) RAS.
    np.testing.assert_allclose(affine[:3, 0], [0.0, 0.0, -0.5], atol=1e-9)
    np.testing.assert_allclose(affine[:3, 1], [-0.8 * cos, -0.8 * sin, 0.0], atol=1e-9)
    _assert_affine_matches_monai(oblique, affine)


def test_colour_secondary_capture_and_an_empty_mask_give_readable_segs(tmp_path):
    image, meta = read_image(SC_RGB)
    empty = np.zeros(image.shape[1:], np.float32)
    written = write_mask_outputs(tmp_path, "sc", empty, 0.5, SC_RGB, meta)
    seg = hd.seg.segread(written["dicom_seg"])
    assert seg.get_segment_description(1).segment_label == "Retinal vessel"
    frames = seg.get_pixels_by_source_instance([pydicom.dcmread(SC_RGB).SOPInstanceUID], segment_numbers=[1])
    assert frames.shape == (1, *image.shape[1:], 1) and int(frames.sum()) == 0


def test_missing_type2_attributes_are_filled_and_missing_uids_are_named(tmp_path):
    image, meta = read_image(CT_SMALL)
    probability = np.clip(image[0], 0, 1)
    dataset = pydicom.dcmread(CT_SMALL)
    del dataset.PatientBirthDate, dataset.AccessionNumber
    anonymised = tmp_path / "anonymised.dcm"
    dataset.save_as(anonymised)
    written = write_mask_outputs(tmp_path / "a", "slice", probability, 0.5, anonymised, meta)
    assert hd.seg.segread(written["dicom_seg"]).PatientBirthDate == ""

    del dataset.StudyInstanceUID
    broken = tmp_path / "no_study_uid.dcm"
    dataset.save_as(broken)
    with pytest.raises(DataError, match="StudyInstanceUID") as raised:
        write_mask_outputs(tmp_path / "b", "slice", probability, 0.5, broken, meta)
    assert str(broken) in str(raised.value)
    assert not (tmp_path / "b" / "slice_seg.dcm").exists()


def test_malformed_dicom_source_is_a_data_error_naming_the_file(tmp_path):
    image, meta = read_image(CT_SMALL)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(CT_SMALL.read_bytes()[:300])
    with pytest.raises(DataError, match="truncated or malformed") as raised:
        write_mask_outputs(tmp_path / "out", "slice", np.zeros(image.shape[1:], np.float32), 0.5, truncated, meta)
    assert str(truncated) in str(raised.value)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff\x13" * 40)
    with pytest.raises(DataError, match="garbage.dcm"):
        write_mask_outputs(tmp_path / "out", "slice", np.zeros(image.shape[1:], np.float32), 0.5, garbage, meta)


def test_bad_probability_maps_and_thresholds_are_refused(tmp_path):
    source = tmp_path / "fundus.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(source)
    _, meta = read_image(source)
    good = np.full((10, 12), 0.25, np.float32)
    with_nan = good.copy()
    with_nan[3, 4] = np.nan
    with pytest.raises(DataError, match="1 NaN/Inf"):
        write_mask_outputs(tmp_path, "x", with_nan, 0.5, source, meta)
    with pytest.raises(DataError, match=r"\(12, 10\) but the source image is \(10, 12\)"):
        write_mask_outputs(tmp_path, "x", good.T, 0.5, source, meta)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        write_mask_outputs(tmp_path, "x", good * 8, 0.5, source, meta)
    with pytest.raises(DataError, match="threshold"):
        write_mask_outputs(tmp_path, "x", good, 0.0, source, meta)
    assert not list(tmp_path.glob("x_*"))


def test_existing_outputs_are_replaced_whole(tmp_path):
    source = tmp_path / "fundus.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(source)
    _, meta = read_image(source)
    first = write_mask_outputs(tmp_path / "out", "x", np.ones((8, 8), np.float32), 0.5, source, meta)
    shutil.copy(first["mask_png"], tmp_path / "first_mask.png")
    second = write_mask_outputs(tmp_path / "out", "x", np.zeros((8, 8), np.float32), 0.5, source, meta)
    assert int(np.asarray(Image.open(tmp_path / "first_mask.png")).max()) == 255
    assert int(np.asarray(Image.open(second["mask_png"])).max()) == 0


def test_formats_choose_the_files_and_a_given_mask_is_written_as_it_is(tmp_path):
    image, meta = read_image(CT_SMALL)
    probability = np.clip(image[0], 0, 1)
    only_pngs = write_mask_outputs(tmp_path / "a", "slice", probability, 0.5, CT_SMALL, meta, formats=())
    assert set(only_pngs) == {"probability_png", "mask_png"}
    no_seg = write_mask_outputs(tmp_path / "b", "slice", probability, 0.5, CT_SMALL, meta, formats=("nifti",))
    assert set(no_seg) == {"probability_png", "mask_png", "mask_nifti"}
    cleaned = np.zeros(probability.shape, bool)
    cleaned[40:60, 10:90] = True  # e.g. what is left after small components were removed
    written = write_mask_outputs(tmp_path / "c", "slice", probability, 0.5, CT_SMALL, meta, mask=cleaned)
    np.testing.assert_array_equal(np.asarray(Image.open(written["mask_png"])) > 0, cleaned)
    np.testing.assert_array_equal(np.asarray(nib.load(written["mask_nifti"]).dataobj)[..., 0], cleaned.astype(np.uint8))
    np.testing.assert_array_equal(pydicom.dcmread(written["dicom_seg"]).pixel_array, cleaned.astype(np.uint8))
    with pytest.raises(DataError, match="the mask is"):
        write_mask_outputs(tmp_path / "d", "slice", probability, 0.5, CT_SMALL, meta, mask=cleaned[:, :64])
    with pytest.raises(ValueError, match="unknown mask format"):
        write_mask_outputs(tmp_path / "d", "slice", probability, 0.5, CT_SMALL, meta, formats=("nrrd",))
