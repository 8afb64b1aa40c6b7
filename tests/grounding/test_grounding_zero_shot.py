"""Zero-shot grounding mechanics on a random-init encoder in a temporary store, and the ``workbench ground`` commands."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from tests.grounding.grounding_helpers import save_encoder
from workbench.cli import build_cli
from workbench.data.manifests import read_manifest, write_manifest
from workbench.data.phantoms import write_cxr_phantoms
from workbench.errors import EXIT_SOME_INPUTS_FAILED, ConfigError, DataError
from workbench.host import create_plugin_manager
from workbench.model_store import ModelStore
from workbench_plugins.grounding.encoder import GroundingEncoder
from workbench_plugins.grounding.grounders import ZeroShotGrounder
from workbench_plugins.grounding.zero_shot import flair_attention_maps, ground_phrases


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A store with a random ViT encoder (64 px, 4x4 grid) and 12 chest phantoms (PNG, 128 px)."""
    folder = tmp_path_factory.mktemp("grounding")
    reference = save_encoder(folder / "store", image_size=64)
    manifest = write_cxr_phantoms(folder / "phantoms", 12, seed=5, size=128, formats=("png",))
    return folder, reference, manifest


def _encoder(workspace) -> GroundingEncoder:
    folder, reference, _ = workspace
    return GroundingEncoder.from_store(reference, ModelStore(folder / "store"), device="cpu")


def test_heatmaps_come_back_at_the_image_size_one_per_phrase(workspace):
    encoder = _encoder(workspace)
    assert encoder.grid() == (4, 4) and encoder.image_size == 64
    image = np.random.default_rng(0).random((1, 96, 80)).astype(np.float32)
    phrases = ["small left pleural effusion", "enlarged cardiac silhouette"]
    for method in ("similarity", "occlusion", "interaction-cam"):
        maps = ground_phrases(encoder, image, phrases, method=method)
        assert maps.shape == (2, 96, 80) and np.isfinite(maps).all()
        scale = float(np.abs(maps).max()) or 1.0  # a random-init tower's gradient maps are tiny
        assert not np.allclose(maps[0] / scale, maps[1] / scale)  # each phrase has its own map
    assert ground_phrases(encoder, image, phrases, method="interaction-cam").min() >= 0.0  # the positive part only
    similarity = ground_phrases(encoder, image, phrases[:1], method="similarity")
    assert -1.0 - 1e-4 <= similarity.min() <= similarity.max() <= 1.0 + 1e-4  # cosine similarities


def test_several_occlusion_windows_average_their_scaled_maps(workspace):
    from workbench_plugins.grounding.settings import ZeroShotSettings
    from workbench_plugins.grounding.zero_shot import occlusion_maps

    encoder = _encoder(workspace)
    prepared = encoder.prepare_images([np.random.default_rng(3).random((64, 64)).astype(np.float32)])
    phrases = encoder.encode_phrases(["left pleural effusion", "right upper zone nodule"])
    large, small = (occlusion_maps(encoder, prepared, phrases, window=size) for size in (0.5, 0.25))
    both = occlusion_maps(encoder, prepared, phrases, window=[0.5, 0.25])
    expected = (large / large.abs().max() + small / small.abs().max()) / 2  # one scale per window size, shared by the phrases
    assert both.shape == large.shape == (2, 64, 64)
    assert torch.allclose(both, expected, atol=1e-6)
    assert torch.allclose(occlusion_maps(encoder, prepared, phrases, window=[0.5]), large)
    assert ZeroShotSettings(window=[0.25, 0.125]).window == [0.25, 0.125]
    for bad in ([], [0.25, 1.5], 0.0):
        with pytest.raises(ValueError, match="window must be a fraction"):
            ZeroShotSettings(window=bad)


def test_dark_fill_leaves_dark_regions_unchanged_where_the_image_mean_would_paint_them(workspace):
    from workbench_plugins.grounding.zero_shot import occlusion_maps

    encoder = _encoder(workspace)
    image = np.zeros((64, 64), dtype=np.float32)
    image[:, 32:] = 1.0  # dark left half (aerated lung), bright right half (body)
    prepared = encoder.prepare_images([image])
    phrases = encoder.encode_phrases(["left pleural effusion", "right upper zone nodule"])
    dark = occlusion_maps(encoder, prepared, phrases, window=0.25, fill="dark")
    mean = occlusion_maps(encoder, prepared, phrases, window=0.25, fill="mean_img")
    # 16-pixel windows that cover columns < 9 (after the smoothing at a quarter window) lie wholly in the dark half:
    # a dark fill changes nothing there, the image mean (0.5 grey) does.
    assert dark[:, :, :8].abs().max() <= 1e-4 * dark.abs().max()
    assert mean[:, :, :8].abs().max() > 0.05 * mean.abs().max()
    assert dark[:, :, 40:].abs().max() > 0.05 * dark.abs().max()  # occluding the bright half still moves the similarity
    with pytest.raises(ConfigError, match="occlusion fill must be one of"):
        occlusion_maps(encoder, prepared, phrases, window=0.25, fill="inpaint")


def test_grounder_turns_heatmaps_into_scored_boxes_inside_the_image(workspace):
    grounding = ZeroShotGrounder(_encoder(workspace), method="similarity", threshold=0.6, max_boxes=2).ground(
        np.random.default_rng(1).random((64, 64)).astype(np.float32), ["right upper zone nodule"])
    boxes = grounding.boxes[0]
    assert 1 <= len(boxes) <= 2 and boxes[0]["score"] == pytest.approx(1.0)
    for box in boxes:
        assert 0 <= box["x"] and box["x"] + box["w"] <= 64 and 0 <= box["y"] and box["y"] + box["h"] <= 64


def test_bad_input_is_refused_with_a_clear_message(workspace, tmp_path):
    encoder = _encoder(workspace)
    image = np.zeros((32, 32), dtype=np.float32)
    with pytest.raises(DataError, match="phrase '  ' is empty"):
        ground_phrases(encoder, image, ["effusion", "  "])
    with pytest.raises(ConfigError, match=r"tiny-encoder:v1.*no text-conditioned attention pool"):
        ground_phrases(encoder, image, ["effusion"], method="flair-attention")
    with pytest.raises(ConfigError, match="unknown grounding method"):
        ground_phrases(encoder, image, ["effusion"], method="gradcam")


def test_a_cnn_tower_is_named_when_patch_tokens_are_needed_and_occlusion_still_works(tmp_path):
    reference = save_encoder(tmp_path / "store", name="tiny-cnn", preset="dual-rn50-minilm", image_size=64)
    encoder = GroundingEncoder.from_store(reference, ModelStore(tmp_path / "store"), device="cpu")
    image = np.random.default_rng(2).random((64, 64)).astype(np.float32)
    with pytest.raises(ConfigError, match=r"tiny-cnn:v1.*no patch tokens"):
        ground_phrases(encoder, image, ["left pleural effusion"], method="similarity")
    with pytest.raises(ConfigError, match=r"tiny-cnn:v1: no patch grid"):
        ground_phrases(encoder, image, ["left pleural effusion"], method="interaction-cam")
    assert ground_phrases(encoder, image, ["left pleural effusion"], method="occlusion", window=0.5).shape == (1, 64, 64)


def _invoke(arguments: list[str]):
    host = create_plugin_manager()
    return CliRunner().invoke(build_cli(host), arguments, obj=host)


def test_ground_command_on_one_image_writes_overlays_metrics_and_the_saliency_overlap(workspace, tmp_path):
    folder, reference, manifest = workspace
    record = read_manifest(manifest)[0]
    saliency = np.zeros((128, 128), dtype=np.float32)
    saliency[80:110, 70:110] = 1.0
    np.save(tmp_path / "saliency.npy", saliency)
    result = _invoke(["ground", "--image", record["image"], "--phrase", "left pleural effusion", "--phrase", "cardiomegaly",
                      "--encoder", reference, "--store", str(folder / "store"), "--method", "similarity",
                      "--saliency", str(tmp_path / "saliency.npy"), "--output-root", str(tmp_path / "runs"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    index = Path(result.output.strip().splitlines()[-1])
    metrics = json.loads((index.parent / "metrics.json").read_text())
    assert [row["phrase"] for row in metrics["phrases"]] == ["left pleural effusion", "cardiomegaly"]
    assert all(0.0 <= row["saliency_overlap_iou"] <= 1.0 and row["boxes"] for row in metrics["phrases"])
    assert len(list((index.parent / "grounding").glob("*.png"))) == 2 and len(list((index.parent / "saliency").glob("*.png"))) == 2
    assert "left pleural effusion" in index.read_text()

    empty = _invoke(["ground", "--image", record["image"], "--phrase", " ", "--encoder", reference, "--store", str(folder / "store"),
                     "--output-root", str(tmp_path / "runs")])
    assert empty.exit_code != 0 and "is empty" in str(empty.exception)
    not_a_map = tmp_path / "volume.npy"
    np.save(not_a_map, np.zeros((4, 4, 4), dtype=np.float32))
    refused = _invoke(["ground", "--image", record["image"], "--phrase", "effusion", "--encoder", reference, "--store", str(folder / "store"),
                       "--saliency", str(not_a_map), "--output-root", str(tmp_path / "runs")])
    assert refused.exit_code != 0 and "volume.npy" in str(refused.exception) and "2-D" in str(refused.exception)


def test_a_saliency_map_at_the_classifier_size_is_resized_and_its_overlap_measured(tmp_path):
    from workbench_plugins.grounding.pages import load_saliency, saliency_overlap

    small = np.zeros((8, 8), dtype=np.float32)
    small[4:, 4:] = -1.0  # the sign says which way the classifier moved, not where
    np.save(tmp_path / "small.npy", small)
    resized = load_saliency(tmp_path / "small.npy", (32, 32))
    assert resized.shape == (32, 32) and resized[24:, 24:].min() == pytest.approx(1.0) and resized[:12, :12].max() == 0.0
    heatmap = np.zeros((32, 32), dtype=np.float32)
    heatmap[16:, 16:] = 1.0
    assert saliency_overlap(heatmap, resized, top_fraction=0.25) == pytest.approx(1.0)
    assert saliency_overlap(heatmap[::-1, ::-1].copy(), resized, top_fraction=0.25) == 0.0


def test_ground_evaluate_scores_phantom_phrases_per_category_and_skips_bad_boxes(workspace, tmp_path):
    folder, reference, manifest = workspace
    records = read_manifest(manifest)
    with_boxes = [record for record in records if record["boxes"]]
    bad = dict(with_boxes[0], id="bad-box", boxes=[dict(with_boxes[0]["boxes"][0], x=120, w=30)])
    boxes_manifest = write_manifest([dict(record, split="test") for record in with_boxes] + [dict(bad, split="test")], tmp_path / "boxes.jsonl")
    config = {
        "run": {"output_root": str(tmp_path / "runs"), "device": "cpu", "name": "eval"},
        "data": {"dataset": "box-manifest", "root": str(boxes_manifest), "eval_split": ["test"]},
        "encoder": {"name": reference, "store": str(folder / "store")},
        "zero_shot": {"method": "occlusion"},
        "boxes": {"thresholds": [0.3, 0.5, 0.7]},
        "examples": 3,
    }
    (tmp_path / "ground.yaml").write_text(yaml.safe_dump(config))
    result = _invoke(["ground", "evaluate", "--config", str(tmp_path / "ground.yaml"), "zero_shot.window=0.5"])
    assert result.exit_code == EXIT_SOME_INPUTS_FAILED, result.output  # one record skipped
    run = Path(result.output.strip().splitlines()[-1]).parent
    metrics = json.loads((run / "metrics.json").read_text())["grounding"]
    phrases = sum(len(record["boxes"]) for record in with_boxes)
    assert metrics["phrases"] == phrases and metrics["images"] == len(with_boxes) and metrics["skipped_records"] == 1
    categories = {box["category"] for record in with_boxes for box in record["boxes"]}
    assert set(metrics["per_category"]) == categories
    overall = metrics["overall"]
    assert overall["n"] == phrases and 0.0 <= overall["pointing"] <= 1.0 and overall["cnr"] >= 0.0
    assert metrics["miou_threshold"] in (0.3, 0.5, 0.7) and overall["miou"] == max(overall[f"iou@{t}"] for t in (0.3, 0.5, 0.7))
    with open(run / "skipped.csv", newline="") as handle:
        assert [row["id"] for row in csv.DictReader(handle)] == ["bad-box"]
    page = (run / "index.html").read_text()
    assert "Worst cases first" in page and page.count("grounding/") >= 3 and "overall" in page


class _TextConditionedPool(torch.nn.Module):
    """The interface of FLAIR's pool (layer-normed query/key/value, attention with a zero slot), as a stored encoder would carry it."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.query_norm, self.key_norm, self.value_norm = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.attention = torch.nn.MultiheadAttention(dim, heads, add_zero_attn=True, batch_first=True)


def test_flair_attention_maps_come_from_a_stored_pool_when_there_is_one(workspace):
    encoder = _encoder(workspace)
    model = copy.deepcopy(encoder.model)
    model.text_conditioned_pool = _TextConditionedPool(model.embed_dim)
    with_pool = GroundingEncoder(model.eval(), encoder.record, encoder.device)
    maps = ground_phrases(with_pool, np.random.default_rng(3).random((48, 48)).astype(np.float32),
                          ["left pleural effusion", "cardiomegaly"], method="flair-attention")
    assert maps.shape == (2, 48, 48) and maps.min() >= 0.0
    # attention over 16 patches and the zero slot sums to one, so the patches' share is at most one
    grid = flair_attention_maps(with_pool, with_pool.prepare_images([np.zeros((48, 48), np.float32)]), with_pool.encode_phrases(["effusion"]))
    assert grid.shape == (1, 4, 4) and 0.0 < float(grid.sum()) <= 1.0 + 1e-5
