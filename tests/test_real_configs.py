"""The real-data configs load with their jobs' settings, name registered builders with options they take, and split as they say."""

from __future__ import annotations

import inspect
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.shared_data import _SHARED
from workbench.catalogs import DatasetCatalog
from workbench.config import load_settings
from workbench_plugins.contrastive.plugin import workbench_register_datasets as contrastive_datasets
from workbench_plugins.contrastive.settings import PretrainSettings
from workbench_plugins.counterfactual.builders import build_class_folders
from workbench_plugins.counterfactual.settings import ClassifyTrainSettings
from workbench_plugins.grounding.plugin import workbench_register_datasets as grounding_datasets
from workbench_plugins.grounding.settings import GroundTrainSettings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def builders():
    catalog = DatasetCatalog()
    contrastive_datasets(catalog.scoped("contrastive"))
    grounding_datasets(catalog.scoped("grounding"))
    return catalog.builders


def _shared_root(configured: Path) -> Path | None:
    """The config's ``../shared/data/<name>`` found where this machine keeps the shared data."""
    path = (_SHARED / configured.name) if _SHARED is not None else None
    return path if path is not None and path.exists() else None


@pytest.mark.parametrize(("name", "settings_class", "counts"), [
    ("real_pretrain_covid.yaml", PretrainSettings, {"train": 241, "val": 49, "test": 51}),
    ("real_ground_tbx11k.yaml", GroundTrainSettings, {"train": 419, "val": 90, "test": 90}),
])
def test_builder_configs(builders, name, settings_class, counts):
    settings = load_settings(settings_class, CONFIGS / name)
    builder = builders.get(settings.data.dataset)
    assert set(settings.data.options) <= set(inspect.signature(builder).parameters), "an option the builder does not take"
    assert settings.data.root is not None and settings.data.root.parts[:3] == ("..", "shared", "data")
    root = _shared_root(settings.data.root)
    if root is None:
        pytest.skip(f"{settings.data.root.name} not found: set WORKBENCH_SHARED_DATA to the shared data folder")
    records = builder(root, **settings.data.options)
    assert Counter(record["split"] for record in records) == counts


def test_classify_config(tmp_path):
    settings = load_settings(ClassifyTrainSettings, CONFIGS / "real_classify_pediatric.yaml")
    assert settings.data.source == "folder" and settings.data.classes == ["NORMAL", "PNEUMONIA"]
    root = _shared_root(settings.data.root)
    if root is None:
        pytest.skip("pediatric-cxr not found: set WORKBENCH_SHARED_DATA to the shared data folder")
    records = build_class_folders(root, classes=settings.data.classes, group_pattern=settings.data.group_pattern,
                                  val_fraction=settings.data.val_fraction, test_fraction=settings.data.test_fraction, seed=settings.data.split_seed)
    assert Counter(record["split"] for record in records) == {"train": 1600, "val": 200, "test": 200}
