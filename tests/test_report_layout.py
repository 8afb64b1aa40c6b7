"""The shared page layout: numbers to three significant figures, the contents bar and its anchors, lazy images, plots."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.report import HtmlReport, fmt, readable_numbers, save_history_plot, save_line_plot, save_png, slugify


@pytest.mark.parametrize("value, unit, shown", [
    (0.8333333333333334, None, "0.833"), (2182.0, None, "2182"), (123456.7, None, "123457"), (7, None, "7"), (3.0, None, "3"),
    (-0.0, None, "0"), (0.001, None, "0.001"), (1.2345e-7, None, "1.23e-7"), (float("nan"), None, "n/a"), (None, None, "n/a"),
    (True, None, "yes"), (np.float32(0.5), None, "0.5"), (np.int64(12345678), None, "12345678"), (999.96, None, "1000"),
    (0.05890587349995258, "s", "58.9 ms"), (123.4, "s", "2.06 min"), (4.2e-5, "s", "42 µs"), (0.9996, "s", "1 s"),
    (7200.0, "s", "2 h"), (0.0, "s", "0 s"), (0.83333, "%", "83.3%"), (12.345, "px", "12.3 px"), ("text", None, "text"),
])
def test_fmt_gives_three_significant_figures_and_time_units(value, unit, shown):
    assert fmt(value, unit) == shown


def test_readable_numbers_rounds_long_floats_in_prose_only():
    text = ("k-NN accuracy 0.6666666666666666; 0.40504501550003624 s per explanation. UID 1.2.840.10008.5.1.4, file a.12345.png, "
            "version 1.0.2, 0.25 kept, 1234.56789 px, tiny 1.234567e-05.")
    assert readable_numbers(text) == ("k-NN accuracy 0.667; 405 ms per explanation. UID 1.2.840.10008.5.1.4, file a.12345.png, "
                                      "version 1.0.2, 0.25 kept, 1235 px, tiny 1.23e-5.")


def test_contents_bar_links_every_section_by_a_unique_stable_slug(tmp_path: Path):
    report = HtmlReport("Page", tmp_path)
    report.section("Loaded plugins", lead="What the host loaded.").text("x")
    report.section("Per image, worst Betti-0 error first").text("y")
    report.section("Config").preformatted("a: 1")
    report.section("Config").text("again")
    report.section("Top").text("a title that would collide with the page's own anchor")
    report.section("!!!").text("nothing to slug")
    assert report.anchors() == ["loaded-plugins", "per-image-worst-betti-0-error-first", "config", "config-2", "top-2", "section"]
    page = report.render()
    nav = re.search(r'<nav class="contents".*?</nav>', page, re.S).group(0)
    links = re.findall(r'href="#([^"]+)"', nav)
    ids = re.findall(r'<section id="([^"]+)"', page)
    assert links == ids == report.anchors()
    assert len(set(ids)) == len(ids) and page.count('id="top"') == 1
    assert '<p class="lead">What the host loaded.</p>' in page
    assert HtmlReport("Page", tmp_path).section("Loaded plugins").anchors() == ["loaded-plugins"]  # the same title, the same anchor
    assert slugify("Chest phantoms (8 studies)") == "chest-phantoms-8-studies"


def test_pages_are_plain_offline_html(tmp_path: Path):
    report = HtmlReport("T", tmp_path)
    report.section("S", lead="lead").text("<script>alert(1)</script>").table([{"a": 1.23456}])
    page = report.render()
    assert "<script" not in page and "&lt;script&gt;" in page
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page) and "@import" not in page and "url(" not in page


def test_figures_are_lazy_with_their_pixel_size_and_relative(tmp_path: Path):
    png = save_png(tmp_path / "figures" / "a.png", np.zeros((30, 50)))
    report = HtmlReport("T", tmp_path)
    report.section("Pictures", lead="Two.").figures([(png, "a picture, AUROC 0.8333333333")], aside="FINDINGS: none.")
    page = report.render()
    image = re.search(r"<img [^>]+>", page).group(0)
    assert 'src="figures/a.png"' in image and 'loading="lazy"' in image and 'width="50"' in image and 'height="30"' in image
    assert "AUROC 0.833<" in page and '<pre class="aside">FINDINGS: none.</pre>' in page


def test_tables_round_numbers_time_columns_and_transpose_wide_single_rows(tmp_path: Path):
    report = HtmlReport("T", tmp_path)
    report.section("Tables", lead="Numbers.")
    report.table([{"method": "cae", "dice": 0.0294117647, "seconds_per_method": 0.405045, "n": 12, "auroc": float("nan")}])
    report.table([{f"c{index}": index + 0.123456 for index in range(8)}])
    page = report.render()
    assert '<td class="num">0.0294</td>' in page and '<td class="num">405 ms</td>' in page and '<td class="num">12</td>' in page
    assert '<td class="num">n/a</td>' in page and "0.0294117647" not in page
    assert "<th>metric</th><th>value</th>" in page and '<tr><td>c7</td><td class="num">7.12</td></tr>' in page


def test_long_blocks_fold_and_page_paths_become_links(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "index.html").write_text("<p>sub</p>")
    report = HtmlReport("T", tmp_path)
    report.section("Config", lead="The settings.").preformatted("\n".join(f"key{index}: {index}" for index in range(60)))
    report.preformatted("short: 1")
    report.text("Open sub/index.html for more; missing/index.html is not linked.")
    page = report.render()
    assert "<details><summary>show all 60 lines</summary><pre>key0: 0" in page and "<pre>short: 1</pre>" in page
    assert '<a href="sub/index.html">sub/index.html</a> for more; missing/index.html is not linked.' in page


def test_line_and_history_plots_are_written_into_the_run_folder(tmp_path: Path):
    path = save_line_plot(tmp_path / "plots" / "line.png", {"top": ([0, 1, 2], [1.0, 0.5, 0.2]), "random": ([0, 1, 2], [1.0, 0.9, 0.8])},
                          xlabel="k", ylabel="p", size=(4.0, 3.0), dpi=50, colours=("#c81e1e", "#5a5a5a"), y_range=(0.0, 1.0))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (200, 150)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert (np.abs(pixels.astype(int) - [200, 30, 30]).sum(axis=1) < 40).any()  # the red line is drawn
    with pytest.raises(ValueError, match="2 x values but 3 y values"):
        save_line_plot(tmp_path / "bad.png", {"a": ([0, 1], [1, 2, 3])})

    history = [{"step": step, "loss": 2.0 / step, "dice": 0.1 * step, "lr": 1e-3} for step in range(1, 11)]
    report = HtmlReport("T", tmp_path)
    report.section("Training", lead="The loss fell.").history(history)
    plot = tmp_path / "figures" / "training-curves.png"
    with Image.open(plot) as image:
        assert image.size == (3 * 320, 240)  # one 320 x 240 panel per scalar: loss, dice, lr
    page = report.render()
    assert 'src="figures/training-curves.png"' in page and 'class="plot"' in page and "10 logged steps (last step 10)" in page
    assert save_history_plot(tmp_path / "none.png", [{"step": 1, "note": "text"}]) is None and not (tmp_path / "none.png").exists()
    report.section("Sweep").plot({"IoU": ([0.1, 0.2], [0.3, 0.4])}, name="sweep", xlabel="threshold", ylabel="IoU", caption="c")
    assert (tmp_path / "figures" / "sweep.png").is_file() and 'src="figures/sweep.png"' in report.render()
