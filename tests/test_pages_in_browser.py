"""The pages in a real browser: the small demo's ``index.html`` and every job page in its run folder, opened in Chromium.

Each page must load every image (lazy ones forced to load), log no console error and raise no script error,
resolve every contents link to an element, fetch nothing from outside the run folder, and carry no script.
A full-page ``screenshot.png`` is saved beside each page for a person to look at.

Needs Debian's ``chromium`` on PATH and the ``playwright`` package (the test extras); the browser is launched
from its binary (no ``playwright install``, no download). Skipped, with the reason, where either is missing.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

# Where each plugin's own job page lands inside the demo's run folder (the others add sections to the demo page itself).
JOB_PAGES = {"counterfactual": ("counterfactual/classify-", "counterfactual/cae-", "counterfactual/explain-"),
             "vlm_explain": ("vlm-explain/explain-vlm-",),
             "reporting": ("reporting/report-train-explainer", "reporting/report-train-editor")}

_CHECK_PAGE = """() => {
  const images = Array.from(document.images);
  const links = Array.from(document.querySelectorAll('nav.contents a')).map(a => a.getAttribute('href'));
  const nav = document.querySelector('nav.contents');
  const outside = Array.from(document.querySelectorAll('[src], [href]'))
    .map(e => e.getAttribute('src') || e.getAttribute('href'))
    .filter(url => /^[a-z][a-z0-9+.-]*:/i.test(url));
  return {
    images: images.map(i => ({src: i.getAttribute('src'), loading: i.getAttribute('loading'),
                              width: i.getAttribute('width'), height: i.getAttribute('height'), natural: i.naturalWidth})),
    links: links,
    unresolved: links.filter(h => !h.startsWith('#') || !document.getElementById(decodeURIComponent(h.slice(1)))),
    sections: document.querySelectorAll('main > section').length,
    sections_without_heading: Array.from(document.querySelectorAll('main > section')).filter(s => !s.querySelector('h2')).length,
    nav_position: nav ? getComputedStyle(nav).position : null,
    scripts: document.scripts.length,
    outside: outside,
  };
}"""


def _chromium_or_skip() -> str:
    """The chromium binary's path; skips the test when it or the playwright package is missing."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; `make test` tries that as root)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright package is not installed (it is in the test extras: pip install -e '.[test]')")
    return executable


@pytest.fixture(scope="module")
def browser() -> Any:
    """A headless Chromium (Debian's binary) driven by playwright, for the module."""
    executable = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def demo_pages(small_demo: Any) -> list[Path]:
    """Every ``index.html`` in the small demo's run folder, the demo's own first."""
    assert small_demo.exit_code == 0, small_demo.output
    pages = sorted(small_demo.folder.rglob("index.html"))
    return [small_demo.index] + [page for page in pages if page != small_demo.index]


def open_and_check(browser: Any, index: Path) -> dict[str, Any]:
    """Open ``index`` (file:// URL) in a fresh page, force the lazy images to load, check it and save ``screenshot.png`` beside it.

    Returns:
        What the page showed: ``images`` (src, loading, width, height, naturalWidth), contents ``links`` and the
        ``unresolved`` ones, ``sections``, ``nav_position``, ``scripts``, ``outside`` URLs, ``errors`` (console
        errors, script errors and failed requests) and whether the heading of a clicked contents link ended
        up ``visible_below_nav``.
    """
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("console", lambda message: errors.append(f"console: {message.text}") if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url} ({request.failure})"))
    try:
        page.goto(index.as_uri(), wait_until="load")
        report = page.evaluate(_CHECK_PAGE)  # before forcing: the attributes as written
        page.evaluate("() => { for (const image of document.images) image.loading = 'eager'; }")
        page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_function("() => Array.from(document.images).every(image => image.complete)")
        page.evaluate("() => window.scrollTo(0, 0)")
        loaded = page.evaluate("() => Array.from(document.images).map(image => image.naturalWidth)")
        for image, natural in zip(report["images"], loaded):
            image["natural"] = natural
        report["visible_below_nav"] = None
        resolved = [link for link in report["links"] if link not in report["unresolved"]]
        if resolved:
            target = resolved[len(resolved) // 2]
            page.click(f"nav.contents a[href='{target}']")
            page.wait_for_timeout(200)
            report["visible_below_nav"] = page.evaluate(
                "(id) => { const heading = document.getElementById(id).querySelector('h2') || document.getElementById(id);"
                " return heading.getBoundingClientRect().top >= document.querySelector('nav.contents').getBoundingClientRect().bottom - 1; }",
                target[1:])
            page.evaluate("() => window.scrollTo(0, 0)")
            page.mouse.move(0, 0)  # no link left hovered in the picture
        page.screenshot(path=str(index.parent / "screenshot.png"), full_page=True)
    finally:
        page.close()
    report["errors"] = errors
    return report


def test_the_demo_run_holds_each_plugins_job_page(demo_pages: list[Path]):
    relative = [page.parent.relative_to(demo_pages[0].parent).as_posix() + "/" for page in demo_pages[1:]]
    for plugin, prefixes in JOB_PAGES.items():
        for prefix in prefixes:
            assert any(path.startswith(prefix) for path in relative), f"{plugin}: no {prefix}*/index.html in the demo run ({relative})"


def test_every_page_loads_cleanly_in_chromium(browser: Any, demo_pages: list[Path]):
    problems: list[str] = []
    reports = {}
    for index in demo_pages:
        report = reports[index] = open_and_check(browser, index)
        name = index.parent.name
        problems += [f"{name}: {error}" for error in report["errors"]]
        problems += [f"{name}: image {image['src']} did not load" for image in report["images"] if not image["natural"]]
        problems += [f"{name}: image {image['src']} is not lazy-loaded with a size" for image in report["images"]
                     if image["loading"] != "lazy" or not image["width"] or not image["height"]]
        problems += [f"{name}: contents link {link} leads nowhere" for link in report["unresolved"]]
        problems += [f"{name}: refers outside the run folder: {url}" for url in report["outside"]]
        if report["sections"] == 0 or len(report["links"]) != report["sections"]:
            problems.append(f"{name}: {len(report['links'])} contents links for {report['sections']} sections")
        if report["sections_without_heading"]:
            problems.append(f"{name}: {report['sections_without_heading']} sections without a heading")
        if report["nav_position"] != "sticky":
            problems.append(f"{name}: the contents bar is {report['nav_position']}, not sticky")
        if report["scripts"]:
            problems.append(f"{name}: {report['scripts']} scripts on a page meant to be plain HTML")
        if report["visible_below_nav"] is False:
            problems.append(f"{name}: a section's heading hides under the contents bar after following its link")
        screenshot = index.parent / "screenshot.png"
        if not screenshot.is_file() or screenshot.stat().st_size == 0:
            problems.append(f"{name}: no screenshot")
    assert not problems, "\n".join(problems)
    demo = reports[demo_pages[0]]
    assert len(demo["images"]) >= 10 and len(demo["links"]) >= 8  # phantoms, plugin steps' figures and plots; one link a section


def test_the_check_catches_a_broken_page(browser: Any, tmp_path: Path):
    (tmp_path / "index.html").write_text(
        '<!doctype html><html><body><nav class="contents"><a href="#here">here</a><a href="#nowhere">nowhere</a></nav>'
        '<main><section id="here"><h2>Here</h2><img src="missing.png" loading="lazy"></section></main>'
        '<script>console.error("boom")</script></body></html>', encoding="utf-8")
    report = open_and_check(browser, tmp_path / "index.html")
    assert report["unresolved"] == ["#nowhere"] and report["images"][0]["natural"] == 0 and report["scripts"] == 1
    assert report["images"][0]["width"] is None and report["nav_position"] == "static"
    assert any("boom" in error for error in report["errors"]) and any("missing.png" in error for error in report["errors"])
    assert (tmp_path / "screenshot.png").stat().st_size > 0
