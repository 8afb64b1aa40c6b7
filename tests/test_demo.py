"""``workbench demo`` end to end with every installed plugin step, on a small budget."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from workbench.cli import build_cli
from workbench.host import create_plugin_manager


def test_demo_runs_every_plugin_step_and_writes_one_page(tmp_path):
    host = create_plugin_manager()
    small_pretrain = ("options={contrastive-pretrain: {data: {options: {n: 64, size: 128}}, "
                      "model: {options: {image_size: 32, context_length: 32}}, train: {steps: 3, batch_size: 8, checkpoint_every: 3}, "
                      f"save: {{store: {tmp_path / 'store'}}}}}, "
                      "vessels: {data: {patch_size: 32, patches_per_image: 4}, model: {options: {channels: [8, 16, 32], strides: [2, 2]}}, "
                      f"train: {{steps: 3, batch_size: 8, checkpoint_every: 3}}, inference: {{roi_size: 64}}, save: {{store: {tmp_path / 'store'}}}}}}}")
    result = CliRunner().invoke(build_cli(host), ["demo", "--config", "configs/demo.yaml", f"run.output_root={tmp_path}",
                                                  "data.cxr_studies=8", "data.fundus_images=2", "run.device=cpu", small_pretrain],
                                obj=host, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    index = Path(result.output.strip().splitlines()[-1])
    page = index.read_text()
    for section in ("Loaded plugins", "Pretraining", "Retrieval examples", "Vessel segmentation", "worst Betti-0 error first",
                    "Why the encoder decided"):
        assert section in page, section
    timings = json.loads((index.parent / "metrics.json").read_text())["demo_timings"]
    assert set(timings) >= {"phantoms_s", "contrastive-pretrain_s", "vessels_s", "vlm-explain_s"}
    assert json.loads((index.parent / "metrics.json").read_text())["pretrain"]["steps"] == 3
