"""The frozen-text cache: same embeddings as the locked tower, only for a fully locked MiniLM."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import ConfigError
from workbench_plugins.contrastive.models import PRESETS


def test_cached_text_embeddings_equal_the_locked_tower_and_the_projection_still_trains():
    torch.manual_seed(0)
    encoder = PRESETS[0].build(image_size=32, context_length=24)
    token_ids = encoder.tokenize(["No pleural effusion.", "Small left apical pneumothorax.", "No pleural effusion."])
    encoder.lock_text_tower(0)
    encoder.eval()
    with torch.no_grad():
        fresh = encoder.encode_text(token_ids)
    encoder.train()
    encoder.enable_frozen_text_cache()
    cached = encoder.encode_text(token_ids)
    torch.testing.assert_close(cached, fresh, rtol=0, atol=1e-6)
    assert len(encoder._text_cache) == 2  # the repeated report is encoded once
    cached.sum().backward()
    assert encoder.clip.text.proj.weight.grad is not None and encoder.clip.text.proj.weight.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in encoder.clip.text.transformer.parameters())


def test_the_cache_is_refused_while_text_layers_still_train():
    encoder = PRESETS[0].build(image_size=32, context_length=24, pretrained_text=None)
    encoder.lock_text_tower(1)
    with pytest.raises(ConfigError, match="text_unlocked_layers: 0"):
        encoder.enable_frozen_text_cache()
