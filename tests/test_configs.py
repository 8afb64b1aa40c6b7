"""Every committed config validates against the settings class of the job it is for."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from workbench.config import load_settings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# config file -> "module:SettingsClass" of the job that reads it
SETTINGS_OF = {
    "cae_phantom.yaml": "workbench_plugins.counterfactual.settings:CaeTrainSettings",
    "classify_phantom.yaml": "workbench_plugins.counterfactual.settings:ClassifyTrainSettings",
    "demo.yaml": "workbench.demo:DemoSettings",
    "ground_phantom.yaml": "workbench_plugins.grounding.settings:GroundSettings",
    "ground_train_phantom.yaml": "workbench_plugins.grounding.settings:GroundTrainSettings",
    "pretrain_phantom.yaml": "workbench_plugins.contrastive.settings:PretrainSettings",
    "real_cae_pediatric.yaml": "workbench_plugins.counterfactual.settings:CaeTrainSettings",
    "real_classify_pediatric.yaml": "workbench_plugins.counterfactual.settings:ClassifyTrainSettings",
    "real_ground_tbx11k.yaml": "workbench_plugins.grounding.settings:GroundTrainSettings",
    "real_pretrain_covid.yaml": "workbench_plugins.contrastive.settings:PretrainSettings",
    "report_edit_phantom.yaml": "workbench_plugins.reporting.settings:ReportTrainSettings",
    "report_phantom.yaml": "workbench_plugins.reporting.settings:ReportTrainSettings",
    "vessels_chase.yaml": "workbench_plugins.vessels.settings:VesselTrainSettings",
    "vessels_phantom.yaml": "workbench_plugins.vessels.settings:VesselTrainSettings",
    "vlm_explain_phantom.yaml": "workbench_plugins.vlm_explain.settings:ExplainSettings",
}
# Files in configs/ that are not job settings: the concept bank vlm_explain_phantom.yaml points at.
NOT_SETTINGS = {"concepts_cxr.txt"}


def _settings_class(target: str) -> type:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def test_every_config_file_has_a_settings_class():
    files = {path.name for path in CONFIGS.iterdir() if path.is_file()}
    assert files - NOT_SETTINGS == set(SETTINGS_OF), "add the new config to SETTINGS_OF (or NOT_SETTINGS)"


@pytest.mark.parametrize("name", sorted(SETTINGS_OF))
def test_config_validates_against_its_settings(name):
    settings_class = _settings_class(SETTINGS_OF[name])
    settings = load_settings(settings_class, CONFIGS / name)
    assert isinstance(settings, settings_class)
    # extra="forbid" all the way down: a key the class does not know would have raised above; a model default
    # standing in for a whole section the file sets would mean the file's section was dropped.
    text = (CONFIGS / name).read_text(encoding="utf-8")
    for section in re.findall(r"^([a-z_]+):", text, flags=re.MULTILINE):
        assert hasattr(settings, section), f"{name}: top-level key {section} is not a field of {settings_class.__name__}"


def test_concept_bank_lists_concepts():
    concepts = [line for line in (CONFIGS / "concepts_cxr.txt").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    assert len(concepts) >= 10 and len(set(concepts)) == len(concepts)


# A measured figure in a comment: a score with two or more decimals, a duration, or the words that introduce one.
MEASURED = re.compile(r"\b0\.\d{2,}\b|\b\d+(\.\d+)?\s?(s|sec|seconds|min|minutes|hours?)\b|\bmeasured\b|\bsession \d+|\d+(\.\d+)?x chance",
                      re.IGNORECASE)


@pytest.mark.parametrize("name", sorted(SETTINGS_OF))
def test_config_comments_quote_no_measured_figure(name):
    """Configs say how a job runs; how well it did lives in benchmarks/results/*.json."""
    comments = [(number, line.split("#", 1)[1]) for number, line in enumerate((CONFIGS / name).read_text(encoding="utf-8").splitlines(), 1)
                if "#" in line]
    quoted = [f"{name}:{number}: {text.strip()}" for number, text in comments if MEASURED.search(text)]
    assert not quoted, "\n".join(quoted)


def test_measured_figure_pattern_catches_the_old_comments():
    assert MEASURED.search(" CNR 1.81, pointing 0.670 (cardiomegaly 0.95)")
    assert MEASURED.search(" 5000 steps (31 minutes on this 2-core CPU)")
    assert MEASURED.search(" image->text R@10 0.504 (5.7x chance)")
    assert not MEASURED.search(" occluder side, fraction of the encoder's input side")
