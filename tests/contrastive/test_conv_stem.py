"""The convolutional-stem ViT tower (``vit-tiny-conv``): shapes, translation behaviour, store round trip."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import ConfigError
from workbench.host import create_plugin_manager
from workbench.model_store import ModelStore
from workbench.registry import create_model
from workbench_plugins.contrastive.models import ConvPatchStem, ReportImageDualEncoder


def _blob_image(row: int, col: int, size: int = 128) -> torch.Tensor:
    """A (1, 3, size, size) black image with one bright 5-pixel disc centred at (row, col)."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((rows - row) ** 2 + (cols - col) ** 2 <= 6).float()
    return disc.expand(1, 3, size, size).clone()


def test_conv_tower_keeps_the_patch_grid_and_has_one_block_fewer():
    torch.manual_seed(0)
    plain = ReportImageDualEncoder(image_tower="vit-tiny", image_size=64, pretrained_text=None).eval()
    conv = ReportImageDualEncoder(image_tower="vit-tiny-conv", image_size=64, pretrained_text=None).eval()
    with torch.no_grad():
        pooled, tokens = conv.image_features(torch.randn(2, 3, 64, 64))
    assert pooled.shape == (2, 256) and tokens.shape == (2, 16, 192)
    assert conv.patch_grid() == plain.patch_grid() == (4, 4)
    assert len(conv.clip.visual.transformer.resblocks) == len(plain.clip.visual.transformer.resblocks) - 1 == 3
    assert isinstance(conv.clip.visual.conv1, ConvPatchStem)


def test_stem_moves_its_output_one_cell_when_a_blob_moves_one_patch():
    torch.manual_seed(0)
    stem = ConvPatchStem(width=32, patch_size=16).eval()
    with torch.no_grad():
        here, there = stem(_blob_image(44, 50)), stem(_blob_image(60, 66))
    assert here.shape == (1, 32, 8, 8)
    # The first row and column of cells see the zero padding, which differs from the normalised
    # background; every other cell follows the blob exactly (16 pixels = one cell).
    assert torch.allclose(there[..., 2:, 2:], here[..., 1:-1, 1:-1], atol=1e-5)
    assert not torch.allclose(there[..., 1:, 1:], here[..., 1:, 1:], atol=1e-3)


@pytest.mark.parametrize("patch_size, halvings", [(8, 1), (16, 2), (32, 3)])
def test_stem_stride_is_the_patch_size(patch_size: int, halvings: int):
    stem = ConvPatchStem(width=64, patch_size=patch_size)
    assert stem(torch.zeros(1, 3, 64, 64)).shape == (1, 64, 64 // patch_size, 64 // patch_size)
    assert sum(isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2) for m in stem) == halvings


@pytest.mark.parametrize("patch_size", [4, 12])
def test_stem_refuses_a_patch_size_it_cannot_reach(patch_size: int):
    with pytest.raises(ConfigError, match="power-of-two patch size"):
        ConvPatchStem(width=64, patch_size=patch_size)


def test_conv_preset_round_trips_through_the_store(tmp_path):
    create_plugin_manager()
    torch.manual_seed(0)
    config = {"image_size": 64, "context_length": 16, "pretrained_text": None}
    model = create_model("dual-vit-tiny-conv-minilm", **config).eval()
    store = ModelStore(tmp_path)
    store.save(model, name="conv-encoder", factory="dual-vit-tiny-conv-minilm", task="contrastive", config=config, plugin="contrastive",
               preprocessing={"image_size": 64, "channels": 3, "intensity": "zscore", "context_length": 16})
    loaded, _ = store.load("conv-encoder")
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.eval().encode_image(images), model.encode_image(images))
