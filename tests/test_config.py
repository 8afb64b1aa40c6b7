"""Config loading: YAML + overrides -> strict pydantic settings, errors naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.config import RunSettings, StrictModel, apply_overrides, load_settings, parse_override, save_settings
from workbench.errors import ConfigError


class OptimSettings(StrictModel):
    lr: float = 1e-3
    betas: list[float] = [0.9, 0.999]


class JobSettings(StrictModel):
    run: RunSettings = RunSettings()
    optim: OptimSettings = OptimSettings()
    steps: int = 10


@pytest.mark.parametrize(
    "text, keys, value",
    [
        ("steps=5", ["steps"], 5),
        ("optim.lr=0.01", ["optim", "lr"], 0.01),
        ("run.device=cpu", ["run", "device"], "cpu"),
        ("optim.betas=[0.5, 0.9]", ["optim", "betas"], [0.5, 0.9]),
        ("run.name=", ["run", "name"], ""),
        ("flag=true", ["flag"], True),
        ("optim.lr=1e-3", ["optim", "lr"], 0.001),
        ("run.name=null", ["run", "name"], None),
        ("run.output_root=runs/a=b", ["run", "output_root"], "runs/a=b"),
        ("model.options.pretrained_image=/w/enc.safetensors", ["model", "options", "pretrained_image"], "/w/enc.safetensors"),
        ("text='1.5'", ["text"], "1.5"),
    ],
)
def test_parse_override_types_values_with_yaml(text, keys, value):
    assert parse_override(text) == (keys, value)


@pytest.mark.parametrize("text", ["steps", "=3", "optim..lr=1"])
def test_parse_override_rejects_malformed(text):
    with pytest.raises(ConfigError):
        parse_override(text)


def test_file_then_overrides(tmp_path: Path):
    config = tmp_path / "job.yaml"
    config.write_text("run:\n  seed: 3\noptim:\n  lr: 0.5\nsteps: 7\n")
    settings = load_settings(JobSettings, config, ["optim.lr=0.25", "run.precision=bf16"])
    assert settings.run.seed == 3
    assert settings.optim.lr == 0.25
    assert settings.run.precision == "bf16"
    assert settings.steps == 7


def test_unknown_key_names_key_and_file(tmp_path: Path):
    config = tmp_path / "typo.yaml"
    config.write_text("optim:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(JobSettings, config)
    assert "optim.lrr" in str(caught.value)
    assert "unknown key" in str(caught.value)
    assert str(config) in str(caught.value)


def test_wrong_type_names_key(tmp_path: Path):
    config = tmp_path / "bad.yaml"
    config.write_text("steps: many\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: steps:"):
        load_settings(JobSettings, config)


def test_bad_precision_from_override_is_refused():
    with pytest.raises(ConfigError, match="run.precision"):
        load_settings(JobSettings, None, ["run.precision=fp8"])


def test_override_into_a_value_is_refused():
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"steps": 3}, ["steps.inner=1"])


@pytest.mark.parametrize("content, message", [("a: [1, 2\n", "invalid YAML"), ("- 1\n- 2\n", "must be a mapping")])
def test_bad_yaml_names_file(tmp_path: Path, content: str, message: str):
    config = tmp_path / "broken.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(JobSettings, config)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(JobSettings, tmp_path / "absent.yaml")


def test_resolved_settings_round_trip(tmp_path: Path):
    settings = load_settings(JobSettings, None, ["steps=42", "optim.betas=[0.1, 0.2]"])
    saved = save_settings(settings, tmp_path / "run" / "config.yaml")
    assert load_settings(JobSettings, saved) == settings


def test_every_shipped_config_validates():
    from workbench.demo import DemoSettings

    configs = Path(__file__).resolve().parents[1] / "configs"
    settings = load_settings(DemoSettings, configs / "demo.yaml")
    assert settings.data.cxr_studies > 0
