"""Report helpers: overlays keep rows-first orientation, HTML references the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.report import HtmlReport, RunFolder, draw_boxes, image_strip, overlay_heatmap, overlay_mask, save_png, signed_colours, to_rgb_uint8


def test_to_rgb_uint8_windows_and_layouts():
    gray = np.array([[0.0, 0.5], [1.0, 2.0]], dtype=np.float32)
    rgb = to_rgb_uint8(gray, low=0.0, high=1.0)
    assert rgb.shape == (2, 2, 3)
    assert rgb[0, 0, 0] == 0 and rgb[0, 1, 0] == 128 and rgb[1, 0, 0] == 255 and rgb[1, 1, 0] == 255
    channel_first = np.stack([gray, gray * 0, gray * 0])
    assert to_rgb_uint8(channel_first).shape == (2, 2, 3)
    with pytest.raises(ValueError):
        to_rgb_uint8(np.zeros((2, 2, 2, 2)))


def test_overlay_mask_colours_only_the_mask_and_keeps_orientation():
    image = np.zeros((20, 30), dtype=np.float32)
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:5, 20:28] = True  # rows 2-4, columns 20-27: top right
    blended = overlay_mask(image, mask, colour=(255, 0, 0), alpha=0.5)
    assert blended.shape == (20, 30, 3)
    assert blended[3, 25, 0] == 128 and blended[3, 25, 1] == 0
    assert blended[15, 5].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="does not match"):
        overlay_mask(image, mask.T)


def test_heatmap_peak_is_red_end():
    heat = np.zeros((10, 10))
    heat[7, 2] = 1.0
    blended = overlay_heatmap(np.zeros((10, 10)), heat, alpha=1.0)
    assert blended[7, 2, 0] > 150 and blended[7, 2, 2] < 50
    assert blended[0, 0, 2] > 100  # the low end is blue


def test_draw_boxes_uses_x_as_column():
    canvas = draw_boxes(np.zeros((40, 60)), [{"x": 40, "y": 5, "w": 10, "h": 8}], colour=(0, 255, 0), width=1)
    assert canvas[5, 45, 1] == 255  # top edge at row y, inside columns x..x+w
    assert canvas[20, 10].tolist() == [0, 0, 0]


def test_strip_and_html(tmp_path: Path):
    run = RunFolder.create("job", tmp_path, name="t")
    strip = image_strip([np.zeros((10, 10)), np.ones((20, 10))], captions=["a", "b"])
    assert strip.shape[0] == 10 + 14 and strip.shape[1] == 10 + 4 + 5
    png = save_png(run.file("figures/strip.png"), strip)
    assert Image.open(png).size == (strip.shape[1], strip.shape[0])
    report = HtmlReport("Title <x>", run.path)
    report.section("Figures").figures([(png, "a strip")]).table([{"metric": "dice", "value": 0.81234}]).preformatted("FINDINGS: ok")
    index = report.write()
    text = index.read_text()
    assert 'src="figures/strip.png"' in text
    assert "0.812" in text and "Title &lt;x&gt;" in text
    metrics = run.write_metrics({"a": 1})
    run.write_metrics({"b": 2})
    assert metrics.read_text().count('"a"') == 1 and '"b": 2' in metrics.read_text()


def test_run_folders_never_collide(tmp_path: Path):
    first = RunFolder.create("job", tmp_path)
    second = RunFolder.create("job", tmp_path)
    assert first.path != second.path and first.path.is_dir() and second.path.is_dir()


def test_signed_colours_are_white_at_zero_red_above_blue_below_and_symmetric():
    tiles = signed_colours(np.array([[0.0, 0.5, -0.5, 1.0, -1.0]]))
    assert tiles[0, 0].tolist() == [255, 255, 255]
    assert tiles[0, 3].tolist() == [200, 30, 30] and tiles[0, 4].tolist() == [30, 60, 200]
    assert tiles[0, 1, 0] > tiles[0, 1, 2] and tiles[0, 2, 2] > tiles[0, 2, 0]  # half-way red, half-way blue
    assert signed_colours(np.zeros((2, 2))).min() == 255
    assert signed_colours(np.array([[0.2]]), limit=0.1).tolist() == [[[200, 30, 30]]]  # clipped at the limit


def test_a_job_closes_its_run_log_so_the_next_job_does_not_write_into_it(tmp_path: Path):
    import logging

    from workbench.report import attached_run_logs, closes_run_logs

    log = logging.getLogger("workbench.test_report")

    @closes_run_logs
    def job(name: str, inner=None, fail: bool = False) -> Path:
        run = RunFolder.create("job", tmp_path, name=name)
        run.attach_log()
        log.info("line of %s before", name)
        if inner is not None:
            inner()
        log.info("line of %s after", name)
        if fail:
            raise RuntimeError(f"{name} failed")
        return run.path / "run.log"

    already = len(attached_run_logs())
    first = job("first")
    second = job("second")
    assert "line of second" not in first.read_text() and "line of first" not in second.read_text()
    assert len(attached_run_logs()) == already  # closed, not just left behind

    outer = job("outer", inner=lambda: job("inner"))  # nested: the outer run keeps its log after the inner one ends
    outer_text, inner_text = outer.read_text(), (tmp_path / "job-inner" / "run.log").read_text()
    assert "line of outer after" in outer_text and "line of inner before" in outer_text
    assert "line of outer" not in inner_text

    with pytest.raises(RuntimeError, match="broken failed"):
        job("broken", fail=True)
    assert len(attached_run_logs()) == already
    job("after")
    assert "line of after" not in (tmp_path / "job-broken" / "run.log").read_text()
