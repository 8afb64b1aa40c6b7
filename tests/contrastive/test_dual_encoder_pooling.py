"""The dual encoder's ViT pooling choice: class token, or the mean of the patch tokens (joint-space patch tokens)."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import ConfigError
from workbench_plugins.contrastive.models import ReportImageDualEncoder


def _tower(image_pool: str | None) -> ReportImageDualEncoder:
    torch.manual_seed(0)
    return ReportImageDualEncoder(image_size=64, image_pool=image_pool, pretrained_text=None).eval()


def test_average_pooled_embedding_is_the_mean_of_the_projected_patch_tokens():
    model = _tower("avg")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled, tokens = model.image_features(images)
    assert tokens.shape == (2, 16, 192) and model.patch_grid() == (4, 4)
    assert torch.allclose(pooled, (tokens @ model.clip.visual.proj).mean(dim=1), atol=1e-5)


def test_class_token_pooling_is_not_the_patch_mean():
    model = _tower("tok")
    with torch.no_grad():
        pooled, tokens = model.image_features(torch.randn(2, 3, 64, 64))
    assert not torch.allclose(pooled, (tokens @ model.clip.visual.proj).mean(dim=1), atol=1e-3)


def test_bad_pool_choices_are_named():
    with pytest.raises(ConfigError, match="image_pool must be"):
        _tower("max")
    with pytest.raises(ConfigError, match="ViT towers"):
        ReportImageDualEncoder(image_tower="RN50", image_size=64, image_pool="avg", pretrained_text=None)
