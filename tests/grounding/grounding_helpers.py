"""Fixtures shared by the grounding tests: a small dual encoder in a temporary store, chest phantoms."""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.host import create_plugin_manager
from workbench.model_store import ModelStore
from workbench.registry import create_model

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def save_encoder(store_root: Path, name: str = "tiny-encoder", preset: str = "dual-vit-tiny-minilm", image_size: int = 32,
                 seed: int = 0, **options) -> str:
    """Build a random-init dual encoder through the registry (the host must register the factories) and store it.

    Returns:
        ``"name:vN"`` of the stored version.
    """
    create_plugin_manager()  # fills the process-wide registry with the plugins' factories
    torch.manual_seed(seed)
    config = {"image_size": image_size, "context_length": 16, "pretrained_text": None, **options}
    model = create_model(preset, **config)
    store = ModelStore(store_root)
    record = store.save(model, name=name, factory=preset, task="contrastive", config=config, plugin="contrastive",
                        preprocessing={"image_size": image_size, "channels": 3, "intensity": "zscore", "mean": OPENAI_MEAN,
                                       "std": OPENAI_STD, "context_length": 16})
    return record.ref
