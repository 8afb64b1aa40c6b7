"""Outputs for people: run folders, PNG overlays, image strips and index.html.

Every job writes to ``runs/<job>-<time>/``: the resolved config, a log,
``metrics.json``, ``skipped.csv``, TensorBoard scalars, PNG figures and an
``index.html`` a clinician or researcher opens in a browser. The image helpers
take arrays in the workbench's convention, rows first: ``(H, W)`` grayscale,
``(H, W, 3)`` RGB or ``(C, H, W)`` channel-first, so an overlay is never drawn
transposed.
"""

from __future__ import annotations

import datetime as _dt
import functools
import html
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, ParamSpec, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageDraw

from workbench.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text

P = ParamSpec("P")
R = TypeVar("R")

RGB = tuple[int, int, int]
FINDING_COLOURS: tuple[RGB, ...] = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180))

# A piecewise-linear "jet"-like colormap: one table, applied to every pixel without matplotlib's colormap machinery.
_HEAT_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_HEAT_COLOURS = np.array([[0, 0, 140], [0, 160, 255], [80, 255, 120], [255, 200, 0], [200, 0, 0]], dtype=np.float32)


class RunLogHandler(logging.FileHandler):
    """The handler writing one run folder's ``run.log`` (a class of its own, told apart from the user's handlers)."""


def attached_run_logs() -> list[RunLogHandler]:
    """The run-log handlers now attached to the ``workbench`` logger, oldest first."""
    return [handler for handler in logging.getLogger("workbench").handlers if isinstance(handler, RunLogHandler)]


def closes_run_logs(job: Callable[P, R]) -> Callable[P, R]:
    """Decorate a job function: the run logs it attaches are detached and closed when it returns or raises.

    Without it, every run log a process opened kept receiving the lines of the jobs run after it (a benchmark's
    classifier run showed its CAE's training in its ``run.log``) and kept its file open. Nested jobs keep their
    order: an inner job's log is closed when the inner job ends, the outer one's when the outer ends.

    Args:
        job: a function that opens a run folder and calls :meth:`RunFolder.attach_log`.

    Returns:
        The function, with the same signature and result.
    """
    @functools.wraps(job)
    def closing(*args: P.args, **kwargs: P.kwargs) -> R:
        before = set(map(id, attached_run_logs()))
        try:
            return job(*args, **kwargs)
        finally:
            workbench_logger = logging.getLogger("workbench")
            for handler in attached_run_logs():
                if id(handler) not in before:
                    workbench_logger.removeHandler(handler)
                    handler.close()

    return closing


class RunFolder:
    """A job's output folder: ``<output_root>/<job>-<YYYYmmdd-HHMMSS>[-n]``.

    Args:
        path: an existing folder (use :meth:`create` to make a new one).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def create(cls, job: str, output_root: str | Path = "runs", name: str | None = None) -> "RunFolder":
        """Make a fresh run folder for ``job`` (a name, else the local time) and return it."""
        root = Path(output_root)
        stem = f"{job}-{name}" if name else f"{job}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        candidate, counter = root / stem, 1
        while True:
            try:
                candidate.mkdir(parents=True, exist_ok=bool(name))
                break
            except FileExistsError:
                counter += 1
                candidate = root / f"{stem}-{counter}"
        return cls(candidate)

    def file(self, relative: str | Path) -> Path:
        """The path of ``relative`` inside the run folder, parents created."""
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    @property
    def skipped_csv(self) -> Path:
        """Where the data layer lists skipped records."""
        return self.path / "skipped.csv"

    @property
    def tensorboard_dir(self) -> Path:
        """Where TensorBoard scalars go."""
        return self.path / "tensorboard"

    @property
    def checkpoint_dir(self) -> Path:
        """Where training checkpoints go."""
        return self.path / "checkpoints"

    def save_settings(self, settings: Any) -> Path:
        """Write the resolved settings (a pydantic model) to ``config.yaml``."""
        from workbench.config import save_settings

        return save_settings(settings, self.path / "config.yaml")

    def write_metrics(self, metrics: Mapping[str, Any], merge: bool = True) -> Path:
        """Write ``metrics.json`` atomically, merged into what is there unless ``merge`` is False."""
        target = self.path / "metrics.json"
        payload: dict[str, Any] = {}
        if merge and target.exists():
            payload = json.loads(target.read_text(encoding="utf-8"))
        payload.update(metrics)
        return atomic_write_json(target, payload)

    def attach_log(self, level: int = logging.INFO) -> logging.Handler:
        """Send the ``workbench`` loggers to ``run.log`` in this folder; returns the handler.

        The handler stays attached until it is detached: a job function that attaches one is decorated with
        :func:`closes_run_logs`, so the next job of the same process does not write into this run's log.
        """
        handler = RunLogHandler(self.path / "run.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(level)
        workbench_logger = logging.getLogger("workbench")
        workbench_logger.addHandler(handler)
        workbench_logger.setLevel(min(level, workbench_logger.level or level))
        return handler


def to_rgb_uint8(image: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Convert an image to displayable RGB.

    Args:
        image: ``(H, W)``, ``(H, W, 3)``, ``(1, H, W)`` or ``(3, H, W)``; any numeric dtype.
        low, high: the intensity window; default the image's own min and max
            (uint8 input is taken as it is).

    Returns:
        ``(H, W, 3)`` uint8.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8 or low is not None or high is not None:
        values = array.astype(np.float32)
        low = float(np.nanmin(values)) if low is None else low
        high = float(np.nanmax(values)) if high is None else high
        scale = (high - low) if high > low else 1.0
        array = (np.clip((values - low) / scale, 0, 1) * 255).round().astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"cannot display an image of shape {np.asarray(image).shape}")
    return array


def heat_colours(heatmap: np.ndarray) -> np.ndarray:
    """Map a ``(H, W)`` heatmap (any range; scaled to [0, 1]) to ``(H, W, 3)`` uint8 colours."""
    values = np.asarray(heatmap, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    channels = [np.interp(scaled, _HEAT_STOPS, _HEAT_COLOURS[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def signed_colours(difference: np.ndarray, limit: float | None = None) -> np.ndarray:
    """Map a signed ``(H, W)`` map to ``(H, W, 3)`` uint8: blue below 0, white at 0, red above, symmetric limits.

    Args:
        difference: e.g. counterfactual minus original.
        limit: the value shown at full colour; None: the largest absolute value (a map of zeros is white).
    """
    values = np.asarray(difference, dtype=np.float32)
    limit = float(np.abs(values).max()) if limit is None else float(limit)
    scaled = np.clip(values / limit, -1.0, 1.0) if limit > 0 else np.zeros_like(values)
    white, red, blue = np.array([255.0, 255.0, 255.0]), np.array([200.0, 30.0, 30.0]), np.array([30.0, 60.0, 200.0])
    weight = np.abs(scaled)[..., None]
    target = np.where((scaled >= 0)[..., None], red, blue)
    return ((1 - weight) * white + weight * target).round().astype(np.uint8)


def overlay_mask(image: np.ndarray, mask: np.ndarray, colour: RGB = (230, 25, 75), alpha: float = 0.45) -> np.ndarray:
    """Blend a boolean ``(H, W)`` mask over ``image`` in ``colour``; returns ``(H, W, 3)`` uint8."""
    rgb = to_rgb_uint8(image).astype(np.float32)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {rgb.shape[:2]}")
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, dtype=np.float32)
    return rgb.round().astype(np.uint8)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a ``(H, W)`` heatmap over ``image``; returns ``(H, W, 3)`` uint8."""
    rgb = to_rgb_uint8(image).astype(np.float32)
    if heatmap.shape != rgb.shape[:2]:
        raise ValueError(f"heatmap shape {heatmap.shape} does not match image shape {rgb.shape[:2]}")
    blended = (1 - alpha) * rgb + alpha * heat_colours(heatmap).astype(np.float32)
    return blended.round().astype(np.uint8)


def draw_boxes(
    image: np.ndarray,
    boxes: Iterable[Mapping[str, Any]],
    colour: RGB = (0, 220, 0),
    width: int = 2,
    label_key: str | None = None,
) -> np.ndarray:
    """Draw ``boxes`` (dicts with pixel ``x, y, w, h``; x = column) on ``image``.

    Returns:
        ``(H, W, 3)`` uint8 with the box outlines (and labels from ``label_key``).
    """
    canvas = Image.fromarray(to_rgb_uint8(image))
    draw = ImageDraw.Draw(canvas)
    for index, box in enumerate(boxes):
        box_colour = tuple(box.get("colour", colour))
        x, y, w, h = (float(box[key]) for key in ("x", "y", "w", "h"))
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=box_colour, width=width)
        if label_key and box.get(label_key):
            draw.text((x + 2, max(0.0, y - 11)), str(box[label_key]), fill=box_colour)
    return np.asarray(canvas)


def image_strip(images: Sequence[np.ndarray], captions: Sequence[str] | None = None, gap: int = 4) -> np.ndarray:
    """Lay images side by side (resized to the first one's height) with captions under each.

    Returns:
        ``(H + caption band, sum(W) + gaps, 3)`` uint8.
    """
    if not images:
        raise ValueError("image_strip needs at least one image")
    tiles = [Image.fromarray(to_rgb_uint8(image)) for image in images]
    height = tiles[0].height
    tiles = [tile if tile.height == height else tile.resize((round(tile.width * height / tile.height), height)) for tile in tiles]
    band = 14 if captions else 0
    width = sum(tile.width for tile in tiles) + gap * (len(tiles) - 1)
    canvas = Image.new("RGB", (width, height + band), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    left = 0
    for index, tile in enumerate(tiles):
        canvas.paste(tile, (left, 0))
        if captions:
            draw.text((left + 2, height + 1), str(captions[index]), fill=(0, 0, 0))
        left += tile.width + gap
    return np.asarray(canvas)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write ``image`` (any shape :func:`to_rgb_uint8` takes) as PNG, atomically."""
    buffer = io.BytesIO()
    Image.fromarray(to_rgb_uint8(image)).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


_TIME_UNITS = (("µs", 1e-6), ("ms", 1e-3), ("s", 1.0), ("min", 60.0), ("h", 3600.0))


def _significant(value: float, digits: int) -> str:
    """``value`` rounded to ``digits`` significant figures; whole numbers of 10**digits and above as integers."""
    if value != value:  # NaN: a score that could not be computed (e.g. an AUROC without positives)
        return "n/a"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    rounded = float(f"{value:.{digits}g}")
    if 10 ** digits <= abs(rounded) < 1e15 or 10 ** digits <= abs(value) < 1e15:
        shown = str(int(round(value)))
    else:
        shown = f"{rounded:.{digits}g}"
        if "e" in shown:  # 1.23e-05 reads better without the padded exponent
            mantissa, exponent = shown.split("e")
            shown = f"{mantissa}e{int(exponent)}"
    return "0" if shown in ("-0", "-0.0") else shown


def fmt(value: Any, unit: str | None = None, digits: int = 3) -> str:
    """A number as a person reads it: ``digits`` significant figures, integers kept whole, times with units.

    Args:
        value: a number (Python or NumPy scalar); anything else is returned as ``str(value)``
            (``None`` and NaN as ``"n/a"``, booleans as ``"yes"``/``"no"``).
        unit: ``"s"`` picks the time unit that reads best (``0.0589`` -> ``"58.9 ms"``, ``123.4`` ->
            ``"2.06 min"``); ``"%"`` shows a fraction as a percentage (``0.8333`` -> ``"83.3%"``); any other
            unit is appended after a space (``fmt(12.345, "px")`` -> ``"12.3 px"``).
        digits: significant figures (values of ``10**digits`` and above are shown whole, never as ``1.23e+03``).

    Returns:
        The text, e.g. ``fmt(0.8333333333333334) == "0.833"``, ``fmt(2182.0) == "2182"``, ``fmt(7) == "7"``.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, (int, float)):
        return str(value)
    if unit == "%":
        return f"{_significant(float(value) * 100, digits)}%"
    if unit == "s" and math.isfinite(value):
        magnitude = float(f"{abs(float(value)):.{digits}g}")  # 0.9996 s reads "1 s", not "1000 ms"
        limits = (1e-3, 1.0, 60.0, 3600.0)  # below each: µs, ms, s, min; else hours
        name, scale = next(((unit_name, unit_scale) for limit, (unit_name, unit_scale) in zip(limits, _TIME_UNITS) if magnitude < limit),
                           _TIME_UNITS[-1])
        if magnitude == 0:
            name, scale = "s", 1.0
        return f"{_significant(float(value) / scale, digits)} {name}"
    shown = str(value) if isinstance(value, int) else _significant(float(value), digits)
    return f"{shown} {unit}" if unit else shown


# A float written out at full precision in prose ("0.8333333333333334", "0.05890587349995258 s"): four or
# more decimals, not part of a dotted name (a DICOM UID, a version, a file name), optionally followed by " s".
_LONG_NUMBER = re.compile(r"(?<![\w.\-])(-?\d+\.\d{4,}(?:[eE][+-]?\d+)?)( s\b)?(?!\w|\.\d)")


def readable_numbers(text: str, digits: int = 3) -> str:
    """Round the long floats written into ``text`` to ``digits`` significant figures (times in seconds to their unit).

    The pages' safety net for numbers a caller interpolated without :func:`fmt`: ``"AUROC 0.8333333333333334"``
    becomes ``"AUROC 0.833"`` and ``"0.0589058 s per image"`` becomes ``"58.9 ms per image"``. Numbers with fewer
    than four decimals, integers and dotted names (``1.2.840.10008``, ``v1.0.2``) are left as written.

    Returns:
        The text with those numbers rewritten.
    """
    def rewrite(match: re.Match[str]) -> str:
        return fmt(float(match.group(1)), "s" if match.group(2) else None, digits)

    return _LONG_NUMBER.sub(rewrite, text)


def slugify(title: str) -> str:
    """An anchor id from a title: lower case, runs of anything but letters and digits as one ``-`` (``"section"`` if empty)."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return slug or "section"


def _time_column(column: str) -> bool:
    """Whether a table column holds seconds (``seconds_per_case``, ``train_s``, ``wall seconds``)."""
    name = column.lower()
    return name.endswith("_s") or "seconds" in name


def save_line_plot(path: str | Path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str = "step",
                   ylabel: str = "", title: str | None = None, log_y: bool = False, size: tuple[float, float] = (4.8, 3.0),
                   dpi: int = 100, colours: Sequence[str] | None = None, y_range: tuple[float, float] | None = None) -> Path:
    """Draw lines (matplotlib, Agg) and write them as a PNG, atomically.

    Args:
        path: where the PNG goes (parents created).
        series: line name -> ``(x values, y values)``, equal lengths; non-finite points are left out.
            Lines of fewer than three points are drawn with markers so a single logged step still shows.
        xlabel, ylabel: the axis labels.
        title: a title over the plot.
        log_y: a logarithmic y axis (only where every shown value is positive).
        size: inches ``(width, height)``; the PNG is ``size * dpi`` pixels.
        dpi: pixels per inch.
        colours: one matplotlib colour per line, in order (default matplotlib's cycle).
        y_range: fixed ``(low, high)`` limits of the y axis (default: fitted to the data).

    Returns:
        The PNG's path.
    """
    panel = {"ylabel": ylabel, "series": series, "log_y": log_y, "colours": colours, "y_range": y_range}
    return _save_panels(path, [panel], xlabel, title, size, dpi, per_row=1)


def _save_panels(path: str | Path, panels: Sequence[Mapping[str, Any]], xlabel: str, title: str | None,
                 panel_size: tuple[float, float], dpi: int, per_row: int) -> Path:
    """Small multiples: one axes per panel (``ylabel``, ``series``, ``log_y``, ``colours``, ``y_range``), ``per_row`` to a row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = max(1, min(per_row, len(panels)))
    rows = max(1, -(-len(panels) // columns))
    figure = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows), dpi=dpi)
    FigureCanvasAgg(figure)
    for index, panel in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        positive = True
        colours = list(panel.get("colours") or [])
        for number, (name, (xs, ys)) in enumerate(panel["series"].items()):
            x = np.asarray(xs, dtype=float)
            y = np.asarray(ys, dtype=float)
            if x.shape != y.shape:
                raise ValueError(f"line {name!r}: {x.size} x values but {y.size} y values")
            keep = np.isfinite(x) & np.isfinite(y)
            positive &= bool((y[keep] > 0).all())
            style: dict[str, Any] = {"color": colours[number]} if number < len(colours) else {}
            axes.plot(x[keep], y[keep], label=str(name), linewidth=1.5, marker="o" if keep.sum() < 3 else None, markersize=4, **style)
        if panel.get("log_y") and positive:
            axes.set_yscale("log")
        if panel.get("y_range") is not None:
            axes.set_ylim(*panel["y_range"])
        axes.set_xlabel(xlabel)
        axes.set_ylabel(panel.get("ylabel", ""))
        axes.grid(True, alpha=0.3)
        if len(panel["series"]) > 1:
            axes.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(target, buffer.getvalue())


def save_history_plot(path: str | Path, history: Sequence[Mapping[str, Any]], x: str = "step", columns: Sequence[str] | None = None,
                      per_row: int = 4, title: str | None = None) -> Path | None:
    """Training curves: one small panel per logged scalar against ``x``, written as one PNG.

    Args:
        path: where the PNG goes.
        history: logged rows, e.g. ``[{"step": 10, "loss": 2.1, "lr": 1e-3}, ...]``.
        x: the key on the x axis (rows without it are numbered from 1).
        columns: the scalars to draw (default every numeric key but ``x``, learning rates last).
        per_row: panels per row.
        title: a title over the panels.

    Returns:
        The PNG's path, or ``None`` when there is no numeric scalar to draw.
    """
    rows = [dict(row) for row in history]
    if columns is None:
        seen: list[str] = []
        for row in rows:
            seen += [key for key, value in row.items() if key != x and key not in seen
                     and isinstance(value, (int, float, np.number)) and not isinstance(value, bool)]
        columns = [key for key in seen if "lr" not in key.lower()] + [key for key in seen if "lr" in key.lower()]
    if not rows or not columns:
        return None
    steps = [float(row.get(x, index + 1)) for index, row in enumerate(rows)]
    panels = []
    for column in columns:
        values = [float(row[column]) if isinstance(row.get(column), (int, float, np.number)) else float("nan") for row in rows]
        panels.append({"ylabel": column, "series": {column: (steps, values)}})
    return _save_panels(path, panels, x, title, (3.2, 2.4), 100, per_row=per_row)


def highlight_word_changes(before: str, after: str, deleted_style: str = "", inserted_style: str = "") -> tuple[str, str]:
    """A word-level diff (difflib) of two texts as two HTML strings, every word escaped.

    Args:
        before, after: the texts (split on whitespace).
        deleted_style, inserted_style: inline CSS for the ``<del>`` and ``<ins>`` spans (none: the page's own).

    Returns:
        ``(before with the words only it has in <del>, after with the words only it has in <ins>)``.
    """
    import difflib

    old, new = before.split(), after.split()
    deleted = f' style="{deleted_style}"' if deleted_style else ""
    inserted = f' style="{inserted_style}"' if inserted_style else ""
    left, right = [], []
    for tag, a0, a1, b0, b1 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        removed, added = html.escape(" ".join(old[a0:a1])), html.escape(" ".join(new[b0:b1]))
        if tag == "equal":
            left.append(removed)
            right.append(added)
            continue
        if removed:
            left.append(f"<del{deleted}>{removed}</del>")
        if added:
            right.append(f"<ins{inserted}>{added}</ins>")
    return " ".join(left), " ".join(right)


@dataclass
class _Section:
    title: str
    parts: list[str] = field(default_factory=list)
    lead: str | None = None


_STYLE = (
    ":root{--ink:#1f2328;--muted:#59636e;--line:#d0d7de;--soft:#f6f8fa;--accent:#0b5cad}"
    "*{box-sizing:border-box}"
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:var(--ink);line-height:1.45;background:#fff}"
    "header,main{max-width:1400px;margin:0 auto;padding:0 2em}"
    "header{padding-top:1.2em}h1{margin:0 0 .2em;font-size:1.7em}.stamp{color:var(--muted);font-size:12px;margin:0 0 .6em}"
    "nav.contents{position:sticky;top:0;z-index:10;background:rgba(255,255,255,.97);border-bottom:1px solid var(--line);"
    "padding:.45em 2em;font-size:13px;max-height:34vh;overflow-y:auto}"
    "nav.contents ol{list-style:none;margin:0 auto;padding:0;max-width:1400px;display:flex;flex-wrap:wrap;gap:.25em 1.1em}"
    "nav.contents a{color:var(--accent);text-decoration:none;white-space:nowrap}nav.contents a:hover{text-decoration:underline}"
    "nav.contents .label{font-weight:600;color:var(--muted)}"
    "section{padding:.4em 0 .8em;border-bottom:1px solid var(--soft);scroll-margin-top:5em}"
    "h2{font-size:1.3em;margin:.8em 0 .3em}p.lead{font-size:15px;color:var(--muted);margin:0 0 .7em;max-width:70em}"
    "p{max-width:70em;margin:.5em 0}a{color:var(--accent)}"
    ".row{display:flex;flex-wrap:wrap;gap:12px;margin:6px 0 14px;align-items:flex-start}"
    "figure{margin:0;width:min-content}"  # as wide as its image: a long caption wraps instead of widening the figure
    "figure img{display:block;max-width:min(720px,calc(100vw - 4em));height:auto;border:1px solid var(--line);background:var(--soft)}"
    "figure.plot img{max-width:calc(100vw - 4em);border-color:transparent;background:#fff}"
    "figcaption{font-size:12px;color:var(--muted);margin-top:3px;min-width:8em}"
    ".row pre.aside{flex:1 1 28em;margin:0;max-width:60em}"
    ".table-wrap{overflow-x:auto;max-width:100%}"
    "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid var(--line);padding:3px 8px;font-size:13px;text-align:left}"
    "td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:var(--soft)}tbody tr:nth-child(even){background:#fbfcfd}"
    "pre{background:var(--soft);padding:8px;white-space:pre-wrap;font-size:12px;border-radius:4px;max-width:100em}"
    "details{margin:6px 0}summary{cursor:pointer;color:var(--accent);font-size:13px}"
)

# A relative path to another page of the run folder written in prose ("open vlm-explain/explain-vlm-.../index.html").
_PAGE_PATH = re.compile(r"(?<![\w/.:-])((?:[\w.-]+/)*[\w.-]+\.html)\b")
FOLD_LINES = 40
WIDE_COLUMNS = 6


class HtmlReport:
    """An ``index.html`` built section by section: a lead sentence, text, figures, plots, tables, config.

    The page is the workbench's one layout: a sticky contents bar linking every section by its anchor
    (the slug of its title, made unique), each section opening with a lead sentence, numbers shown to
    three significant figures (:func:`fmt`), images lazy-loaded with their sizes, and no script or
    external resource, so it reads offline. Image paths are written relative to the report's folder so
    the run folder can be moved or zipped and still open.
    """

    def __init__(self, title: str, folder: str | Path):
        self.title = title
        self.folder = Path(folder)
        self.sections: list[_Section] = []

    def section(self, title: str, lead: str | None = None) -> "HtmlReport":
        """Start a new section titled ``title``, opening with the ``lead`` sentence; later calls add to it."""
        self.sections.append(_Section(title, lead=lead))
        return self

    def lead(self, sentence: str) -> "HtmlReport":
        """Set (or replace) the current section's lead sentence: what the reader is looking at."""
        self._current().lead = sentence
        return self

    def _current(self) -> _Section:
        if not self.sections:
            self.section(self.title)
        return self.sections[-1]

    def _linked(self, paragraph: str) -> str:
        """``paragraph`` escaped, with each relative path of an existing ``.html`` file in the folder made a link to it."""
        pieces, last = [], 0
        for match in _PAGE_PATH.finditer(paragraph):
            target = self.folder / match.group(1)
            if not target.is_file() or ".." in Path(match.group(1)).parts:
                continue
            href = html.escape(Path(match.group(1)).as_posix())
            pieces += [html.escape(paragraph[last:match.start()]), f'<a href="{href}">{html.escape(match.group(1))}</a>']
            last = match.end()
        return "".join(pieces) + html.escape(paragraph[last:])

    def text(self, paragraph: str) -> "HtmlReport":
        """Add a paragraph (escaped; long floats rounded by :func:`readable_numbers`; paths of the run's pages made links)."""
        self._current().parts.append(f"<p>{self._linked(readable_numbers(paragraph))}</p>")
        return self

    def preformatted(self, content: str, summary: str | None = None) -> "HtmlReport":
        """Add a block of monospaced text (escaped, shown exactly), e.g. a report or a config.

        A block longer than ``FOLD_LINES`` lines (or any block given a ``summary``) is folded under a
        ``<details>`` line the reader clicks open, so an appendix such as the config does not bury the page.
        """
        lines = content.count("\n") + 1
        block = f"<pre>{html.escape(content)}</pre>"
        if summary is not None or lines > FOLD_LINES:
            block = f"<details><summary>{html.escape(summary or f'show all {lines} lines')}</summary>{block}</details>"
        self._current().parts.append(block)
        return self

    def _image(self, image_path: str | Path, caption: str, css_class: str = "") -> str:
        """One ``<figure>``: the lazy-loaded image (with its pixel size when the file is readable) linking to itself."""
        path = Path(image_path)
        relative = path.resolve().relative_to(self.folder.resolve()).as_posix()
        size = ""
        try:
            with Image.open(path) as opened:
                size = f' width="{opened.width}" height="{opened.height}"'
        except (OSError, ValueError):
            pass
        caption = readable_numbers(caption)
        source, alt = html.escape(relative), html.escape(caption)
        attribute = f' class="{css_class}"' if css_class else ""
        return (f'<figure{attribute}><a href="{source}"><img src="{source}" alt="{alt}" loading="lazy" decoding="async"{size}></a>'
                f"<figcaption>{alt}</figcaption></figure>")

    def figures(self, items: Iterable[tuple[str | Path, str]], aside: str | None = None) -> "HtmlReport":
        """Add a row of figures: ``(image path, caption)`` pairs (paths inside the report's folder).

        ``aside`` is monospaced text (a report, a ranked list) laid beside the figures in the same row.
        """
        cells = [self._image(image_path, caption) for image_path, caption in items]
        if aside is not None:
            cells.append(f'<pre class="aside">{html.escape(aside)}</pre>')
        self._current().parts.append(f'<div class="row">{"".join(cells)}</div>')
        return self

    def _figure_path(self, name: str | None, suffix: str) -> Path:
        stem = slugify(name) if name else f"{slugify(self._current().title)}-{suffix}"
        return self.folder / "figures" / f"{stem}.png"

    def plot(self, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], name: str | None = None, xlabel: str = "step",
             ylabel: str = "", caption: str = "", title: str | None = None, log_y: bool = False) -> "HtmlReport":
        """Add a line plot (:func:`save_line_plot`), written to ``figures/<name>.png`` in the report's folder.

        Args:
            series: line name -> ``(x values, y values)``.
            name: the PNG's stem (default: the current section's anchor plus ``-plot``).
            xlabel, ylabel, title, log_y: as :func:`save_line_plot`.
            caption: the figure's caption.

        Returns:
            The report, for chaining.
        """
        path = save_line_plot(self._figure_path(name, "plot"), series, xlabel, ylabel, title, log_y)
        self._current().parts.append(f'<div class="row">{self._image(path, caption or ylabel, "plot")}</div>')
        return self

    def history(self, rows: Sequence[Mapping[str, Any]], name: str | None = None, caption: str = "", x: str = "step",
                columns: Sequence[str] | None = None) -> "HtmlReport":
        """Add training curves (:func:`save_history_plot`) of logged rows, written to ``figures/<name>.png``.

        Args:
            rows: the training history, one mapping per logged step (``step`` plus scalars).
            name: the PNG's stem (default: the current section's anchor plus ``-curves``).
            caption: the figure's caption (default: which scalars over how many logged steps).
            x: the key on the x axis.
            columns: the scalars to draw (default all numeric ones).

        Returns:
            The report, for chaining (nothing is added when no row has a numeric scalar).
        """
        path = save_history_plot(self._figure_path(name, "curves"), rows, x=x, columns=columns)
        if path is not None:
            last = rows[-1]
            caption = caption or f"Training curves over {len(rows)} logged steps (last {x} {fmt(last.get(x, len(rows)))})."
            self._current().parts.append(f'<div class="row">{self._image(path, caption, "plot")}</div>')
        return self

    def table(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 3,
              transpose: bool | None = None) -> "HtmlReport":
        """Add a table; ``columns`` defaults to the first row's keys.

        Numbers are shown with :func:`fmt` to ``digits`` significant figures (columns named ``*_s`` or
        ``*seconds*`` as times with their unit) and right-aligned; long floats inside text cells are rounded too.
        ``transpose`` shows the table as ``metric | value`` rows, one per column; by default a single row of
        more than ``WIDE_COLUMNS`` columns (a summary) is shown that way instead of one wide line.
        """
        if not rows:
            return self.text("(no rows)")
        columns = list(columns or rows[0].keys())
        if transpose or (transpose is None and len(rows) == 1 and len(columns) > WIDE_COLUMNS):
            rows = [{"metric": column, "value": row.get(column, "")} for row in rows for column in columns]
            columns = ["metric", "value"]
        head = "".join(f"<th>{html.escape(str(column))}</th>" for column in columns)
        body = []
        for row in rows:
            cells = []
            for column in columns:
                value = row.get(column, "")
                if isinstance(value, np.generic):
                    value = value.item()
                if isinstance(value, str) and value == "n/a":  # a number that could not be computed, aligned with the numbers
                    cells.append('<td class="num">n/a</td>')
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    name = str(row.get("metric", column)) if column == "value" else str(column)
                    shown = fmt(value, "s" if _time_column(name) and isinstance(value, float) else None, digits)
                    cells.append(f'<td class="num">{html.escape(shown)}</td>')
                else:
                    cells.append(f"<td>{html.escape(readable_numbers(fmt(value) if value is not None else ''))}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        self._current().parts.append(
            f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')
        return self

    def anchors(self) -> list[str]:
        """The sections' anchor ids in page order: the slug of each title, ``-2``, ``-3``... on repeats."""
        used = {"top", "contents"}
        ids = []
        for section in self.sections:
            base = slugify(section.title)
            anchor, counter = base, 1
            while anchor in used:
                counter += 1
                anchor = f"{base}-{counter}"
            used.add(anchor)
            ids.append(anchor)
        return ids

    def diff(self, before: str, after: str, titles: tuple[str, str] = ("before", "after"), note: str = "") -> "HtmlReport":
        """Add two texts side by side with a word-level diff (:func:`highlight_word_changes`): words only in ``before``
        struck through in red, words only in ``after`` marked green; every text is escaped. ``note`` goes under them."""
        marked = highlight_word_changes(before, after, deleted_style="background:#fbb",
                                        inserted_style="background:#bfb;text-decoration:none")
        cells = "".join(f'<td style="vertical-align:top;width:50%"><b>{html.escape(title)}</b><br>{words or "<i>(empty)</i>"}</td>'
                        for title, words in zip(titles, marked))
        caption = f'<tr><td colspan="2"><small>{html.escape(note)}</small></td></tr>' if note else ""
        self._current().parts.append(f'<table style="width:100%"><tr>{cells}</tr>{caption}</table>')
        return self

    def render(self) -> str:
        """The whole page as HTML text: header, contents bar, sections."""
        anchors = self.anchors()
        links = "".join(f'<li><a href="#{anchor}">{html.escape(section.title)}</a></li>' for anchor, section in zip(anchors, self.sections))
        nav = (f'<nav class="contents" id="contents" aria-label="Contents"><ol><li class="label">Contents</li>{links}</ol></nav>'
               if self.sections else "")
        sections = []
        for anchor, section in zip(anchors, self.sections):
            lead = f'<p class="lead">{html.escape(readable_numbers(section.lead))}</p>' if section.lead else ""
            sections.append(f'<section id="{anchor}"><h2>{html.escape(section.title)}</h2>{lead}{"".join(section.parts)}</section>')
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(self.title)}</title>'
            f'<style>{_STYLE}</style></head><body><header id="top"><h1>{html.escape(self.title)}</h1>'
            f'<p class="stamp">written {stamp}</p></header>{nav}<main>{"".join(sections)}</main></body></html>\n'
        )

    def write(self, path: str | Path | None = None) -> Path:
        """Write the page (default ``index.html`` in the folder), atomically; return its path."""
        return atomic_write_text(path or self.folder / "index.html", self.render())
