"""A negated phrase peaks lower than its positive phrase on phantoms, with an encoder the contrastive plugin trains here (slow)."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from workbench.cli import build_cli
from workbench.data.manifests import read_manifest
from workbench.host import create_plugin_manager
from workbench.model_store import ModelStore
from workbench_plugins.grounding.data import iter_samples, negated_phrase
from workbench_plugins.grounding.encoder import GroundingEncoder
from workbench_plugins.grounding.zero_shot import peak_response


def _invoke(arguments: list[str]):
    host = create_plugin_manager()
    return CliRunner().invoke(build_cli(host), arguments, obj=host, catch_exceptions=False)


@pytest.mark.slow
def test_no_pleural_effusion_peaks_lower_than_the_effusion_phrase(tmp_path):
    config = {
        "run": {"output_root": str(tmp_path / "runs"), "seed": 0, "device": "cpu"},
        "data": {"dataset": "phantom-cxr", "root": str(tmp_path / "phantoms"), "options": {"n": 600, "size": 128, "seed": 0},
                 "train_split": ["train"], "eval_split": ["val", "test"]},
        "model": {"preset": "dual-vit-tiny-minilm", "options": {"image_size": 64, "context_length": 64}, "text_unlocked_layers": 0},
        "objective": {"name": "clip"},
        "train": {"steps": 200, "batch_size": 64, "lr": 0.001, "warmup_steps": 10, "checkpoint_every": 100, "log_every": 50},
        "eval": {"retrieval": False, "zeroshot": False, "linear_probe": False, "examples": 0},
        "save": {"name": "negation-encoder", "store": str(tmp_path / "store")},
    }
    (tmp_path / "pretrain.yaml").write_text(yaml.safe_dump(config))
    result = _invoke(["pretrain", "--config", str(tmp_path / "pretrain.yaml")])
    assert result.exit_code == 0, result.output
    encoder = GroundingEncoder.from_store("negation-encoder", ModelStore(tmp_path / "store"), device="cpu")
    records = [record for record in read_manifest(tmp_path / "phantoms" / "manifest.jsonl") if record["split"] != "train"]
    outcomes: dict[str, list[int]] = {}
    for sample in iter_samples([record for record in records if record["boxes"]]):
        for box in sample.boxes:
            positive, negative = peak_response(encoder, sample.image, [box["phrase"], negated_phrase(box["category"])], method="similarity")
            outcomes.setdefault(box["category"], []).append(int(negative < positive))
    rates = {category: sum(values) / len(values) for category, values in outcomes.items()}
    overall = sum(sum(values) for values in outcomes.values()) / sum(len(values) for values in outcomes.values())
    print("negation peaked lower:", {category: round(rate, 2) for category, rate in rates.items()}, "overall", round(overall, 2))
    assert len(outcomes["pleural_effusion"]) >= 10
    assert rates["pleural_effusion"] >= 0.7, rates
    assert overall > 0.5, rates
