"""The supervised grounding head: shapes, loss maths, ``workbench ground train`` (store, resume) and evaluation with the head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from tests.grounding.grounding_helpers import save_encoder
from workbench.checkpoints import latest_checkpoint
from workbench.cli import build_cli
from workbench.data.phantoms import write_cxr_phantoms
from workbench.errors import ConfigError
from workbench.host import create_plugin_manager
from workbench.model_store import ModelStore
from workbench_plugins.grounding.grounders import HeadGrounder
from workbench_plugins.grounding.losses import GroundingLoss, patch_coverage
from workbench_plugins.grounding.models import PhraseGroundingHead


def test_head_outputs_a_grid_heatmap_and_a_normalised_box():
    head = PhraseGroundingHead(token_dim=24, text_dim=16, grid=[3, 4], hidden=32, layers=1, heads=4)
    outputs = head(torch.randn(5, 12, 24), torch.randn(5, 16))
    assert outputs["heatmap_logits"].shape == (5, 3, 4) and outputs["boxes"].shape == (5, 4)
    assert ((outputs["boxes"] > 0) & (outputs["boxes"] < 1)).all()
    with pytest.raises(ConfigError, match="3x4 grid got 9 patch tokens"):
        head(torch.randn(1, 9, 24), torch.randn(1, 16))


def test_loss_is_zero_for_boxes_on_target_and_grows_with_the_error():
    criterion = GroundingLoss()
    target = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    heatmap = torch.zeros(1, 2, 2)
    heatmap[0, 0, 0] = 1.0
    logits = torch.where(heatmap > 0, torch.tensor(20.0), torch.tensor(-20.0))
    exact = criterion({"boxes": target, "heatmap_logits": logits}, target, heatmap)
    assert exact["l1"] == pytest.approx(0.0, abs=1e-6) and exact["giou"] == pytest.approx(0.0, abs=1e-5)
    assert exact["bce"] < 1e-6 and exact["dice"] < 1e-3
    shifted = criterion({"boxes": target + torch.tensor([[0.1, 0.0, 0.0, 0.0]]), "heatmap_logits": -logits}, target, heatmap)
    assert shifted["l1"] == pytest.approx(0.1 / 4) and shifted["giou"] > 0.3 and shifted["bce"] > 5 and shifted["loss"] > exact["loss"]
    assert patch_coverage(torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]), (1, 2)).tolist() == [[0.75, 0.0]]


def _invoke(arguments: list[str]):
    host = create_plugin_manager()
    return CliRunner().invoke(build_cli(host), arguments, obj=host, catch_exceptions=False)


def test_ground_train_stores_a_head_that_grounds_and_resumes(tmp_path):
    reference = save_encoder(tmp_path / "store", image_size=64)
    write_cxr_phantoms(tmp_path / "phantoms", 40, seed=1, size=128, formats=("png",))
    config = {
        "run": {"output_root": str(tmp_path / "runs"), "device": "cpu", "name": "head"},
        "data": {"dataset": "phantom-cxr", "root": str(tmp_path / "phantoms"), "image_key": "image_png",
                 "train_split": ["train"], "eval_split": ["val", "test"]},
        "encoder": {"name": reference, "store": str(tmp_path / "store")},
        "head": {"hidden": 32, "layers": 1, "heads": 4},
        "train": {"steps": 30, "batch_size": 8, "lr": 0.003, "warmup_steps": 2, "checkpoint_every": 10, "log_every": 5},
        "examples": 2,
        "save": {"name": "tiny-head"},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    result = _invoke(["ground", "train", "--config", str(tmp_path / "train.yaml")])
    assert result.exit_code == 0, result.output
    run = Path(result.output.strip().splitlines()[-1]).parent
    saved = json.loads((run / "metrics.json").read_text())
    metrics, history = saved["grounding"], saved["history"]
    assert metrics["steps"] == 30 and metrics["stored_model"] == "tiny-head:v1" and metrics["phrases"] > 0
    assert 0.0 <= metrics["overall"]["box_acc@0.5"] <= 1.0 and 0.0 <= metrics["overall"]["miou"] <= 1.0
    assert history[-1]["loss"] < history[0]["loss"]  # the head learns on its training phrases
    assert latest_checkpoint(run / "checkpoints").name == "step-00000030"
    assert "Held-out grounding" in (run / "index.html").read_text()

    store = ModelStore(tmp_path / "store")
    record = store.resolve("tiny-head")
    assert record.task == "grounding" and record.extra["encoder"] == reference and record.parent == reference
    grounder = HeadGrounder.from_store("tiny-head", store, device="cpu")
    grounding = grounder.ground(torch.rand(1, 100, 90).numpy(), ["small left pleural effusion"])
    assert grounding.heatmaps.shape == (1, 100, 90) and len(grounding.boxes[0]) == 1
    box = grounding.boxes[0][0]
    assert 0 <= box["x"] <= box["x"] + box["w"] <= 90 + 1e-6 and 0 <= box["y"] <= box["y"] + box["h"] <= 100 + 1e-6

    resumed = _invoke(["ground", "train", "--resume", str(run)])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "metrics.json").read_text())["grounding"]["steps"] == 30  # nothing left to train

    evaluate = {"run": {"output_root": str(tmp_path / "runs"), "device": "cpu"}, "data": config["data"],
                "encoder": {"store": str(tmp_path / "store")}, "head": "tiny-head", "examples": 1}
    (tmp_path / "evaluate.yaml").write_text(yaml.safe_dump(evaluate))
    scored = _invoke(["ground", "evaluate", "--config", str(tmp_path / "evaluate.yaml")])
    assert scored.exit_code == 0, scored.output
    again = json.loads((Path(scored.output.strip().splitlines()[-1]).parent / "metrics.json").read_text())["grounding"]
    assert again["overall"]["box_acc@0.5"] == pytest.approx(metrics["overall"]["box_acc@0.5"])
    assert again["method"].startswith("head tiny-head:v1")


def test_box_weighted_heatmap_peaks_inside_the_predicted_box():
    from workbench_plugins.grounding.grounders import box_weighted

    flat = torch.ones(2, 40, 60)
    boxes = torch.tensor([[0.25, 0.75, 0.2, 0.1], [0.8, 0.2, 0.1, 0.3]])  # (cx, cy, w, h), normalised
    weighted = box_weighted(flat, boxes)
    for index, (cx, cy, _, _) in enumerate(boxes.tolist()):
        row, col = divmod(int(weighted[index].argmax()), 60)
        assert abs((col + 0.5) / 60 - cx) < 1 / 60 + 1e-6 and abs((row + 0.5) / 40 - cy) < 1 / 40 + 1e-6
    assert float(weighted.max()) <= 1.0 and float(weighted[0, 0, 59]) < 1e-3  # far from the box: close to zero
    # patch evidence inside the box still ranks: a brighter patch map half inside the box wins over the box centre alone
    biased = torch.ones(1, 40, 60)
    biased[0, :, :15] = 2.0
    peak_col = int(box_weighted(biased, boxes[:1])[0].argmax()) % 60
    assert peak_col < 15


def test_head_grounder_refuses_an_unknown_heatmap():
    head = PhraseGroundingHead(token_dim=8, text_dim=8, grid=[2, 2], hidden=8, layers=1, heads=2)
    with pytest.raises(ConfigError, match="heatmap"):
        HeadGrounder(None, head, heatmap="peaks")  # type: ignore[arg-type]
