"""The shared mask reader: grey masks as stored, two-colour images by their brighter colour, colour images refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from workbench.data.masks import mask_plane, read_binary_mask, read_mask_values
from workbench.errors import DataError

FOREGROUND = np.zeros((6, 8), dtype=bool)
FOREGROUND[2:4, 1:7] = True


def two_colours(foreground_colour: tuple[int, ...], background_colour: tuple[int, ...]) -> np.ndarray:
    """A ``(3, 6, 8)`` picture: ``foreground_colour`` on FOREGROUND, ``background_colour`` elsewhere."""
    picture = np.where(FOREGROUND[..., None], foreground_colour, background_colour).astype(np.float32)
    return np.moveaxis(picture, -1, 0)


@pytest.mark.parametrize(
    "image, expected",
    [
        (FOREGROUND[None].astype(np.float32) * 255, FOREGROUND * 255.0),  # grey {0, 255}: stored values kept
        (FOREGROUND[None].astype(np.float32) * 2, FOREGROUND * 2.0),  # a label map keeps its labels
        (np.where(FOREGROUND, 252.0, 4.0)[None], FOREGROUND * 1.0),  # grey {4, 252}: > 0 would be everything
        (two_colours((252, 254, 252), (4, 2, 4)), FOREGROUND * 1.0),  # near-white on near-black
        (two_colours((4, 2, 4), (252, 254, 252)), ~FOREGROUND * 1.0),  # the brighter colour is the mask, wherever it is
        (two_colours((255, 0, 0), (0, 0, 0)), FOREGROUND * 1.0),  # one colour on black: the colour is brighter
        (np.repeat(FOREGROUND[None] * 255.0, 3, axis=0), FOREGROUND * 255.0),  # equal RGB channels
        (two_colours((3, 3, 5), (3, 3, 5)), np.zeros((6, 8))),  # one dark colour: an empty annotation
    ],
)
def test_mask_plane_values(image, expected):
    np.testing.assert_array_equal(mask_plane(image, "m.png"), expected)


@pytest.mark.parametrize(
    "image, reason",
    [
        (two_colours((255, 0, 0), (0, 200, 0)), r"colours \(0, 200, 0\) and \(255, 0, 0\), neither grey"),
        (np.random.default_rng(0).integers(0, 256, (3, 6, 8)).astype(np.float32), "colours in 3 channels that differ"),
        (np.zeros((2, 6, 8), dtype=np.float32), r"expected a 2-D mask \(1, H, W\)"),
    ],
)
def test_colour_images_are_refused_naming_the_file(image, reason):
    with pytest.raises(DataError, match=reason) as caught:
        mask_plane(image, "drawing.png")
    assert str(caught.value).startswith("drawing.png: ")


def test_palette_gif_and_png_read_as_masks(tmp_path):
    for name in ("annotation.gif", "annotation.png"):
        image = Image.frombytes("P", (8, 6), FOREGROUND.astype(np.uint8).tobytes())
        image.putpalette([4, 2, 4, 252, 254, 252])
        image.save(tmp_path / name)
        np.testing.assert_array_equal(read_binary_mask(tmp_path / name), FOREGROUND)
        assert read_mask_values(tmp_path / name).dtype == np.float32
