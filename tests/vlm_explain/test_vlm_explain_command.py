"""`workbench explain-vlm` on one image and on a manifest, with a random-init encoder and chest phantoms in tmp_path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.vlm_explain.vlm_explain_helpers import store_random_encoder
from workbench.cli import build_cli
from workbench.data.manifests import read_manifest, write_manifest
from workbench.data.phantoms import write_cxr_phantoms
from workbench.host import create_plugin_manager
from workbench_plugins.vlm_explain.concepts import write_concept_bank

BANK = ["pleural effusion", "effusion blunting the costophrenic angle", "enlarged cardiac silhouette", "cardiomegaly",
        "pneumothorax", "pulmonary nodule", "consolidation", "lungs are clear"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A store with a random ViT encoder (64 px), a concept bank, and 8 chest phantoms (PNG, 128 px)."""
    folder = tmp_path_factory.mktemp("vlm-explain-cli")
    reference = store_random_encoder(folder / "store")
    bank = write_concept_bank(folder / "concepts.txt", BANK, header="test bank")
    manifest = write_cxr_phantoms(folder / "phantoms", 8, seed=3, size=128, formats=("png",))
    return folder, reference, bank, manifest


def _invoke(arguments: list[str]):
    host = create_plugin_manager()
    return CliRunner().invoke(build_cli(host), arguments, obj=host)


def test_one_image_gets_a_page_with_decision_concepts_regions_and_similarity_maps(workspace, tmp_path):
    folder, reference, bank, manifest = workspace
    record = next(record for record in read_manifest(manifest) if record["boxes"])
    common = ["explain-vlm", "--model", reference, "--store", str(folder / "store"), "--image", record["image"], "--concepts", str(bank),
              "--output-root", str(tmp_path / "runs"), "--device", "cpu"]
    result = _invoke(common + ["--classes", "pleural effusion,cardiomegaly", "--classes", "pneumothorax", "--report", record["report"]])
    assert result.exit_code == 0, result.output
    index = Path(result.output.strip().splitlines()[-1])
    metrics = json.loads((index.parent / "metrics.json").read_text())
    decision = metrics["decision"]
    assert set(decision["probabilities"]) == {"pleural effusion", "cardiomegaly", "pneumothorax"}
    assert sum(decision["probabilities"].values()) == pytest.approx(1.0) and decision["decision"] in decision["probabilities"]
    assert 0.0 <= decision["mutual_knowledge"]["score"] <= 1.0
    assert 0.0 <= decision["deletion_auc_topk"] <= 1.0 and 0.0 <= decision["deletion_auc_random"] <= 1.0
    texts = [item["text"] for item in metrics["similarity_maps"]]
    assert " ".join(record["report"].split()) in texts and all(item["interaction_cam"] for item in metrics["similarity_maps"])
    pictures = {path.name for path in index.parent.rglob("*.png")}
    assert {"image.png", "deletion.png", "region-00.png", "maps-00.png"} <= pictures
    page = index.read_text()
    assert "Zero-shot decision" in page and "Mutual knowledge" in page and "Interaction-CAM" in page

    one_class = _invoke(common + ["--classes", "pleural effusion"])
    assert one_class.exit_code != 0 and "at least two classes" in str(one_class.exception)
    nothing = _invoke(common)
    assert nothing.exit_code != 0 and "give --classes" in str(nothing.exception)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    no_bank = _invoke(common[:-6] + ["--concepts", str(empty), "--classes", "a,b", "--output-root", str(tmp_path / "runs")])
    assert no_bank.exit_code != 0 and "empty.txt: the concept bank is empty" in str(no_bank.exception)


def test_evaluate_scores_a_manifest_and_skips_a_bad_image(workspace, tmp_path):
    folder, reference, bank, manifest = workspace
    records = [dict(record, split="test") for record in read_manifest(manifest)]
    broken = dict(records[0], id="broken", image=str(tmp_path / "missing.png"))
    boxes_manifest = write_manifest(records + [broken], tmp_path / "explain.jsonl")
    config = {
        "run": {"output_root": str(tmp_path / "runs"), "device": "cpu", "name": "eval"},
        "model": {"name": reference, "store": str(folder / "store")},
        "concepts": {"bank": str(bank), "top_k": 3},
        "deletion": {"max_k": 4, "random_draws": 3},
        "data": {"manifest": str(boxes_manifest), "max_map_images": 3},
        "finding_keywords": {"cardiomegaly": ["cardiomegaly", "enlarged cardiac"]},
        "examples": 1,
    }
    (tmp_path / "explain.yaml").write_text(yaml.safe_dump(config))
    result = _invoke(["explain-vlm", "evaluate", "--config", str(tmp_path / "explain.yaml"), "maps.window=0.5"])
    assert result.exit_code == 0, result.output
    run = Path(result.output.strip().splitlines()[-1]).parent
    metrics = json.loads((run / "metrics.json").read_text())["explain_vlm"]
    assert metrics["images"] == len(records) and metrics["skipped_records"] == 1
    with_findings = [record for record in records if record["findings"]]
    assert metrics["images_with_findings"] == len(with_findings)
    assert metrics["correct_decisions"] == round(metrics["decision_accuracy"] * len(with_findings))
    mapped_boxes = sum(len(record["boxes"]) for record in records[:3])
    energy = metrics["similarity_energy_in_box"]
    assert energy["boxes"] == mapped_boxes and (mapped_boxes == 0 or 0.0 <= energy["occlusion"] <= 1.0)
    assert set(metrics["per_finding"]) == {finding for record in with_findings for finding in record["findings"]}
    with open(run / "skipped.csv", newline="") as handle:
        assert [row["id"] for row in csv.DictReader(handle)] == ["broken"]
    page = (run / "index.html").read_text()
    assert "Summary" in page and "top_concept_correct" in page and "window: 0.5" in (run / "config.yaml").read_text()

    typo = _invoke(["explain-vlm", "evaluate", "--config", str(tmp_path / "explain.yaml"), "classes=[effusion]"])
    assert typo.exit_code != 0 and "at least two classes" in str(typo.exception)
