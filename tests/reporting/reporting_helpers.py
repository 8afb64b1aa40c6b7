"""Fixtures shared by the reporting tests: a random-init dual encoder in a temporary store, small records."""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.host import create_plugin_manager
from workbench.model_store import ModelStore
from workbench.registry import create_model

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def save_tiny_encoder(store_root: Path, name: str = "tiny-encoder", image_size: int = 32, seed: int = 0) -> str:
    """Build a random-init ViT-tiny dual encoder through the registry and store it; return ``"name:vN"``."""
    create_plugin_manager()  # fills the process-wide registry with the installed plugins' factories
    torch.manual_seed(seed)
    config = {"image_size": image_size, "context_length": 16, "pretrained_text": None}
    model = create_model("dual-vit-tiny-minilm", **config)
    record = ModelStore(store_root).save(model, name=name, factory="dual-vit-tiny-minilm", task="contrastive", config=config,
                                         plugin="contrastive",
                                         preprocessing={"image_size": image_size, "channels": 3, "intensity": "zscore", "mean": OPENAI_MEAN,
                                                        "std": OPENAI_STD, "context_length": 16})
    return record.ref
