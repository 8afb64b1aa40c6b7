"""``workbench check-topology`` end to end through the host: JSON lines, skipped files, overlays, index.html."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from click.testing import CliRunner
from PIL import Image

from workbench.cli import build_cli, main
from workbench.errors import EXIT_ALL_INPUTS_FAILED, EXIT_OK, EXIT_SOME_INPUTS_FAILED
from workbench.host import create_plugin_manager
from workbench_plugins.vessels import plugin as vessels_plugin

from tests.helpers.shared_data import CHASE_DB1 as CHASE, requires_chase_db1


def run_cli(arguments: list[str]):
    host = create_plugin_manager(autoload=False, extra_plugins=[("vessels", vessels_plugin)])
    return CliRunner().invoke(build_cli(host), arguments, obj=host, catch_exceptions=False)


def line_mask(cut: bool = False) -> np.ndarray:
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[22:27, 4:60] = 255
    if cut:
        mask[:, 30:33] = 0
    return mask


def write_png(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path)
    return path


def test_folder_with_references_by_stem_skips_bad_files_and_writes_outputs(tmp_path: Path):
    predictions, references, out = tmp_path / "pred", tmp_path / "ref", tmp_path / "out"
    write_png(predictions / "cut.png", line_mask(cut=True))
    write_png(predictions / "same.png", line_mask())
    write_png(predictions / "wrongshape.png", line_mask())
    (predictions / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    for name in ("cut", "same", "corrupt"):
        write_png(references / f"{name}.png", line_mask())
    write_png(references / "wrongshape.png", np.zeros((30, 30), dtype=np.uint8))

    result = run_cli(["check-topology", str(predictions), "--reference", str(references), "--out", str(out), "--no-progress"])
    assert result.exit_code == EXIT_SOME_INPUTS_FAILED, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    by_name = {Path(record["file"]).name: record for record in records}
    assert set(by_name) == {"cut.png", "same.png"}
    assert by_name["cut.png"]["betti0_error"] == 1 and len(by_name["cut.png"]["breaks"]) == 1
    assert by_name["same.png"]["dice"] == 1.0 and by_name["same.png"]["cldice"] == 1.0 and by_name["same.png"]["cal"] == 1.0
    assert "corrupt.png" in result.stderr and "wrongshape.png" in result.stderr and "does not match" in result.stderr

    saved = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["file"] for record in saved] == [record["file"] for record in records]
    page = (out / "index.html").read_text()
    assert page.index("cut.png") < page.index("same.png")  # sorted by Betti-0 error, worst first
    assert "corrupt.png" in page
    overlay = np.asarray(Image.open(out / by_name["cut.png"]["overlay"]))
    assert overlay.shape == (48, 64, 3)
    gap = by_name["cut.png"]["breaks"][0]
    row, col = (gap["a"][0] + gap["b"][0]) // 2, (gap["a"][1] + gap["b"][1]) // 2
    assert tuple(overlay[row, col]) == (255, 225, 25)  # the break line crosses the cut
    assert (overlay == (230, 25, 75)).all(axis=-1).any()  # missed reference pixels in red


def test_references_in_order_glob_and_every_file_failing(tmp_path: Path):
    first = write_png(tmp_path / "a_pred.png", line_mask(cut=True))
    second = write_png(tmp_path / "b_pred.png", line_mask())
    result = run_cli(["check-topology", str(tmp_path / "*_pred.png"), "--reference", str(second), "--reference", str(second), "--no-progress"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(record["file"]).name for record in records] == ["a_pred.png", "b_pred.png"]
    assert [record["betti0_error"] for record in records] == [1, 0]

    alone = run_cli(["check-topology", str(first), "--break-distance", "2", "--no-progress"])
    record = json.loads(alone.stdout)
    assert record["n_components"] == 2 and record["breaks"] == [] and "dice" not in record

    grey = write_png(tmp_path / "photo.png", (np.arange(48 * 64).reshape(48, 64) % 251).astype(np.uint8))
    failed = run_cli(["check-topology", str(grey), "--no-progress"])
    assert failed.exit_code == EXIT_ALL_INPUTS_FAILED and "photo.png" in failed.stderr and "binary-like" in failed.stderr


def write_palette_gif(path: Path, foreground: np.ndarray, palette: list[int]) -> Path:
    """A two-entry palette GIF as annotation tools write them: index 1 where ``foreground``, entries not pure black/white."""
    image = Image.frombytes("P", (foreground.shape[1], foreground.shape[0]), foreground.astype(np.uint8).tobytes())
    image.putpalette(palette)
    image.save(path, optimize=False)
    return path


def test_two_colour_palette_gif_is_a_mask_and_colour_images_are_refused(tmp_path: Path):
    line = line_mask(cut=True) > 0
    gif = write_palette_gif(tmp_path / "annotation.gif", line, [4, 2, 4, 252, 254, 252])
    assert Image.open(gif).getpalette()[:6] == [4, 2, 4, 252, 254, 252]
    inverted = write_palette_gif(tmp_path / "inverted.gif", ~line, [252, 254, 252, 4, 2, 4])  # index 0 is the bright one
    result = run_cli(["check-topology", str(gif), str(inverted), "--reference", str(write_png(tmp_path / "ref.png", line_mask())),
                      "--reference", str(tmp_path / "ref.png"), "--no-progress"])
    assert result.exit_code == EXIT_OK, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["n_components"] for record in records] == [2, 2]  # the two halves of the cut line, not the whole image
    assert [record["betti0_error"] for record in records] == [1, 1]
    assert records[0]["dice"] == records[1]["dice"] == pytest.approx(2 * line.sum() / (line.sum() + (line_mask() > 0).sum()))

    photo = write_png(tmp_path / "photo.png", np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    red_green = np.zeros((48, 64, 3), dtype=np.uint8)
    red_green[..., 0], red_green[line, 0], red_green[line, 1] = 200, 0, 200
    drawing = write_png(tmp_path / "drawing.png", red_green)
    refused = run_cli(["check-topology", str(photo), str(drawing), "--no-progress"])
    assert refused.exit_code == EXIT_ALL_INPUTS_FAILED
    assert "photo.png: " in refused.stderr and "colours in 3 channels that differ), not a mask" in refused.stderr
    assert "drawing.png: " in refused.stderr and "neither grey), not a mask" in refused.stderr


def run_main(arguments: list[str]) -> int:
    """The exit status of the real ``workbench`` entry point (not click's test runner, which exits by itself)."""
    try:
        main(arguments)
    except SystemExit as stop:
        return int(stop.code or 0)
    return EXIT_OK


@pytest.mark.parametrize("bad_files, status", [(0, EXIT_OK), (1, EXIT_SOME_INPUTS_FAILED), (2, EXIT_ALL_INPUTS_FAILED)])
def test_the_workbench_command_exits_with_the_batch_status(tmp_path: Path, bad_files: int, status: int, capsys):
    for index in range(2):
        path = tmp_path / f"mask{index}.png"
        if index < bad_files:
            path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
        else:
            write_png(path, line_mask())
    others = [argument for name in ("contrastive", "counterfactual", "grounding", "reporting", "vlm_explain")
              for argument in ("--disable-plugin", name)]
    assert run_main([*others, "check-topology", str(tmp_path), "--no-progress"]) == status
    captured = capsys.readouterr()
    assert captured.out.count("n_components") == 2 - bad_files and captured.err.count("skipped") == bad_files


@requires_chase_db1
def test_chase_with_fov_derived_from_the_photograph():
    result = run_cli(["check-topology", str(CHASE / "Image_11L_2ndHO.png"), "--reference", str(CHASE / "Image_11L_1stHO.png"),
                      "--fov", str(CHASE / "Image_11L.jpg"), "--no-progress"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert 0.78 < record["dice"] < 0.87 and 0.82 < record["cldice"] < 0.92  # measured 0.827 and 0.867 through the API


def write_multiframe_dicom(path: Path, frames: np.ndarray) -> Path:
    """``frames`` (N, H, W) uint8 as an uncompressed multi-frame secondary-capture DICOM."""
    meta = pydicom.dataset.FileMetaDataset()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.2"  # multi-frame grayscale byte SC
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "OT"
    ds.NumberOfFrames, (ds.Rows, ds.Columns) = frames.shape[0], frames.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_frame_option_picks_a_frame_and_multiframe_without_it_is_refused(tmp_path: Path):
    cine = write_multiframe_dicom(tmp_path / "cine.dcm", np.stack([line_mask(), line_mask(cut=True), line_mask()]))
    whole, cut = (json.loads(run_cli(["check-topology", str(cine), "--frame", frame, "--no-progress"]).stdout) for frame in ("0", "1"))
    assert (whole["n_components"], cut["n_components"]) == (1, 2)
    refused = run_cli(["check-topology", str(cine), "--no-progress"])
    assert refused.exit_code == EXIT_ALL_INPUTS_FAILED
    assert "cine.dcm" in refused.stderr and "multi-frame DICOM (3 frames); choose one with --frame N" in refused.stderr
    beyond = run_cli(["check-topology", str(cine), "--frame", "3", "--no-progress"])
    assert beyond.exit_code == EXIT_ALL_INPUTS_FAILED and "frame 3 requested but the file has 3 frame(s)" in beyond.stderr


def test_frame_option_on_pydicom_multiframe_mr():
    """pydicom's emri_small.dcm (10 MR frames): --frame decodes that frame, which is then judged (grey levels: not a mask)."""
    emri = pydicom.data.get_testdata_file("emri_small.dcm", download=False)
    if emri is None:
        pytest.skip("emri_small.dcm ships in the pydicom-data package, not installed")
    without = run_cli(["check-topology", emri, "--no-progress"])
    assert without.exit_code == EXIT_ALL_INPUTS_FAILED and "multi-frame DICOM (10 frames); choose one with --frame N" in without.stderr
    with_frame = run_cli(["check-topology", emri, "--frame", "4", "--no-progress"])
    assert with_frame.exit_code == EXIT_ALL_INPUTS_FAILED and "emri_small.dcm" in with_frame.stderr
    assert "multi-frame" not in with_frame.stderr and "not a binary-like mask" in with_frame.stderr
