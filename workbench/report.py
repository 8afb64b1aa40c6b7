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
import html
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from workbench.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text

RGB = tuple[int, int, int]
FINDING_COLOURS: tuple[RGB, ...] = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180))

# A piecewise-linear "jet"-like colormap: one table instead of depending on matplotlib for one function.
_HEAT_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_HEAT_COLOURS = np.array([[0, 0, 140], [0, 160, 255], [80, 255, 120], [255, 200, 0], [200, 0, 0]], dtype=np.float32)


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
        """Send the ``workbench`` loggers to ``run.log`` in this folder; returns the handler."""
        handler = logging.FileHandler(self.path / "run.log", encoding="utf-8")
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


@dataclass
class _Section:
    title: str
    parts: list[str] = field(default_factory=list)


class HtmlReport:
    """An ``index.html`` built section by section: text, figures, tables, config.

    Image paths are written relative to the report's folder so the run folder
    can be moved or zipped and still open.
    """

    def __init__(self, title: str, folder: str | Path):
        self.title = title
        self.folder = Path(folder)
        self.sections: list[_Section] = []

    def section(self, title: str) -> "HtmlReport":
        """Start a new section titled ``title``; later calls add to it."""
        self.sections.append(_Section(title))
        return self

    def _current(self) -> _Section:
        if not self.sections:
            self.section(self.title)
        return self.sections[-1]

    def text(self, paragraph: str) -> "HtmlReport":
        """Add a paragraph (escaped)."""
        self._current().parts.append(f"<p>{html.escape(paragraph)}</p>")
        return self

    def preformatted(self, content: str) -> "HtmlReport":
        """Add a block of monospaced text (escaped), e.g. a report or a config."""
        self._current().parts.append(f"<pre>{html.escape(content)}</pre>")
        return self

    def figures(self, items: Iterable[tuple[str | Path, str]]) -> "HtmlReport":
        """Add a row of figures: ``(image path, caption)`` pairs."""
        cells = []
        for image_path, caption in items:
            relative = Path(image_path).resolve().relative_to(self.folder.resolve()).as_posix()
            cells.append(
                f'<figure><a href="{html.escape(relative)}"><img src="{html.escape(relative)}" alt="{html.escape(caption)}"></a>'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        self._current().parts.append(f'<div class="row">{"".join(cells)}</div>')
        return self

    def table(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> "HtmlReport":
        """Add a table; ``columns`` defaults to the first row's keys; floats rounded to ``digits``."""
        if not rows:
            return self.text("(no rows)")
        columns = list(columns or rows[0].keys())
        head = "".join(f"<th>{html.escape(str(column))}</th>" for column in columns)
        body = []
        for row in rows:
            cells = []
            for column in columns:
                value = row.get(column, "")
                shown = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
                cells.append(f"<td>{html.escape(shown)}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        self._current().parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
        return self

    def diff(self, before: str, after: str, titles: tuple[str, str] = ("before", "after"), note: str = "") -> "HtmlReport":
        """Add two texts side by side with a word-level diff (difflib): words only in ``before`` struck through in red
        (``<del>``), words only in ``after`` marked green (``<ins>``); every text is escaped. ``note`` goes under them."""
        import difflib

        old, new = before.split(), after.split()
        left, right = [], []
        for tag, a0, a1, b0, b1 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
            removed, added = html.escape(" ".join(old[a0:a1])), html.escape(" ".join(new[b0:b1]))
            if tag == "equal":
                left.append(removed)
                right.append(added)
                continue
            if removed:
                left.append(f'<del style="background:#fbb">{removed}</del>')
            if added:
                right.append(f'<ins style="background:#bfb;text-decoration:none">{added}</ins>')
        cells = "".join(f'<td style="vertical-align:top;width:50%"><b>{html.escape(title)}</b><br>{" ".join(words) or "<i>(empty)</i>"}</td>'
                        for title, words in zip(titles, (left, right)))
        caption = f'<tr><td colspan="2"><small>{html.escape(note)}</small></td></tr>' if note else ""
        self._current().parts.append(f'<table style="width:100%"><tr>{cells}</tr>{caption}</table>')
        return self

    def render(self) -> str:
        """The whole page as HTML text."""
        style = (
            "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}"
            "figure{display:inline-block;margin:0 12px 12px 0;vertical-align:top}"
            "figure img{max-width:320px;border:1px solid #ccc}figcaption{font-size:12px;max-width:320px}"
            "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
            "th{background:#f0f0f0}pre{background:#f7f7f7;padding:8px;white-space:pre-wrap;font-size:12px}"
        )
        sections = "".join(f"<section><h2>{html.escape(s.title)}</h2>{''.join(s.parts)}</section>" for s in self.sections)
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>"
            f"<p><small>written {stamp}</small></p>{sections}</body></html>\n"
        )

    def write(self, path: str | Path | None = None) -> Path:
        """Write the page (default ``index.html`` in the folder), atomically; return its path."""
        return atomic_write_text(path or self.folder / "index.html", self.render())
