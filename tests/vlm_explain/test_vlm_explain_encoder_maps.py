"""Explanations from a random-init dual encoder in a temporary store: decisions, regions, occlusion and Interaction-CAM."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.vlm_explain.vlm_explain_helpers import store_random_encoder
from workbench.errors import ConfigError
from workbench.model_store import ModelStore
from workbench_plugins.vlm_explain.encoder import ExplainedEncoder
from workbench_plugins.vlm_explain.explain import Explainer, report_sentences
from workbench_plugins.vlm_explain.settings import MapSettings
from workbench_plugins.vlm_explain.similarity_maps import concept_regions, interaction_cam, occlusion_map

BANK = ["pleural effusion", "blunted costophrenic angle", "enlarged cardiac silhouette", "cardiomegaly", "pneumothorax",
        "pulmonary nodule", "lungs are clear", "heart size is normal"]
CLASSES = ["pleural effusion", "cardiomegaly", "pneumothorax"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A random ViT dual encoder at 64 px (4 x 4 patch grid), fetched back from its store."""
    root = tmp_path_factory.mktemp("vlm-explain-store")
    reference = store_random_encoder(root)
    return ExplainedEncoder.from_store(reference, ModelStore(root), device="cpu")


def _image(seed: int = 0, size: int = 80) -> np.ndarray:
    return np.random.default_rng(seed).random((1, size, size)).astype(np.float32)


def test_a_decision_over_the_classes_is_explained_with_concepts_regions_and_maps(encoder):
    explainer = Explainer(encoder, BANK, CLASSES)
    explained = explainer.explain(_image(), report="FINDINGS: Small left pleural effusion. No pneumothorax.")
    decision = explained.decision
    assert decision.probabilities.shape == (3,) and decision.probabilities.sum() == pytest.approx(1.0)
    assert decision.chosen == int(np.argmax(decision.probabilities)) and decision.chosen_class in CLASSES
    top = decision.top_concepts(3)
    assert all(row["contribution"] > 0 for row in top)
    assert [row["contribution"] for row in top] == sorted((row["contribution"] for row in top), reverse=True)
    assert 0.0 <= decision.mutual["score"] <= 1.0
    assert decision.deletion.top.shape == (len(BANK) + 1,)  # k = 0..min(max_k=10, bank size)
    assert set(explained.regions) == {row["concept"] for row in top}
    assert all(heatmap.shape == (80, 80) for heatmap in explained.regions.values())
    texts = [item.text for item in explained.maps]
    assert texts == [f"{decision.chosen_class[:1].upper()}{decision.chosen_class[1:]} is present.",
                     "FINDINGS: Small left pleural effusion. No pneumothorax.", "Small left pleural effusion.", "No pneumothorax."]
    assert all(item.occlusion.shape == (80, 80) and item.cam.shape == (80, 80) and item.cam.min() >= 0 for item in explained.maps)


def test_class_list_of_one_and_empty_bank_are_refused(encoder):
    with pytest.raises(ConfigError, match="at least two classes"):
        Explainer(encoder, BANK, ["pleural effusion"])
    with pytest.raises(ConfigError, match="bank.txt: the concept bank is empty"):
        Explainer(encoder, ["  ", ""], CLASSES, bank_source="bank.txt")


def test_concept_regions_are_patch_token_cosines(encoder):
    prepared = encoder.prepare_images([_image(1)])
    vectors = encoder.encode_texts(["pleural effusion", "pneumothorax"])
    regions = concept_regions(encoder, prepared, vectors.numpy())
    patches = encoder.patch_embeddings(prepared)[0]
    assert regions.shape == (2, 4, 4)
    np.testing.assert_allclose(regions.reshape(2, -1), (vectors @ patches.T).numpy(), atol=1e-5)


def test_occlusion_map_is_the_similarity_drop_when_a_window_is_hidden(encoder):
    image = _image(2, 64)
    prepared = encoder.prepare_images([image])
    text = encoder.encode_texts(["left pleural effusion"])[0]
    drop = occlusion_map(encoder, prepared, text, window=0.5, overlap=0.0)
    assert drop.shape == (64, 64)
    # with non-overlapping 32 px windows, the top-left quarter's value is the drop for hiding exactly that quarter
    hidden = prepared.clone()
    hidden[..., :32, :32] = prepared.mean()
    base = float(encoder.encode_images(prepared)[0] @ text)
    expected = base - float(encoder.encode_images(hidden)[0] @ text)
    assert drop[:32, :32] == pytest.approx(np.full((32, 32), expected), abs=1e-5)


def test_interaction_cam_is_gradient_times_activation_and_leaves_no_hook_behind(encoder):
    prepared = encoder.prepare_images([_image(3)])
    text = encoder.encode_texts(["enlarged cardiac silhouette"])[0]
    block, batch_first = encoder.last_image_block()
    before = encoder.encode_images(prepared)
    cam = interaction_cam(encoder, prepared, text)
    assert cam.shape == (4, 4) and cam.min() >= 0.0 and cam.sum() > 0
    assert not block._forward_pre_hooks and torch.equal(before, encoder.encode_images(prepared))
    # scaling the text scales the similarity and so every gradient: the map scales with it
    np.testing.assert_allclose(interaction_cam(encoder, prepared, 2.0 * text), 2.0 * cam, rtol=1e-4, atol=1e-7)
    # the opposite text flips every gradient: what was positive is now clipped, so the two maps never overlap
    flipped = interaction_cam(encoder, prepared, -text)
    assert float((np.minimum(cam, flipped)).max()) == 0.0


def test_a_tower_that_refuses_patch_tokens_is_named_with_the_way_out(encoder):
    model = copy.deepcopy(encoder.model)
    model.patch_tokens_available = False  # what the dual encoder sets for a CNN tower: its own check then refuses
    refusing = ExplainedEncoder(model, encoder.record, encoder.device)
    with pytest.raises(ConfigError, match=rf"{encoder.ref}: a model without patch tokens.*maps.regions=0 maps.interaction_cam=false"):
        Explainer(refusing, BANK, CLASSES)


@pytest.mark.slow  # building a random ResNet-50 takes ~15 s on a shared CPU
def test_a_model_without_patch_tokens_is_named_and_can_still_be_explained_by_occlusion(tmp_path):
    reference = store_random_encoder(tmp_path / "store", name="explain-cnn", preset="dual-rn50-minilm")
    cnn = ExplainedEncoder.from_store(reference, ModelStore(tmp_path / "store"), device="cpu")
    with pytest.raises(ConfigError, match=r"explain-cnn:v1: a model without patch tokens.*--occlusion-only"):
        Explainer(cnn, BANK, CLASSES)
    explainer = Explainer(cnn, BANK, CLASSES, maps=MapSettings(regions=0, interaction_cam=False, window=0.5))
    explained = explainer.explain(_image(4, 64), texts=["left pleural effusion"], class_map=False)
    assert explained.decision is not None and explained.regions == {}
    assert [item.text for item in explained.maps] == ["left pleural effusion"] and explained.maps[0].cam is None
    assert explained.maps[0].occlusion.shape == (64, 64)


def test_report_sentences_drop_headers_and_list_numbers():
    report = "FINDINGS: Small left pleural effusion. No pneumothorax.\n\nIMPRESSION: 1. Small left effusion. 2. Mild cardiomegaly."
    assert report_sentences(report) == ["Small left pleural effusion.", "No pneumothorax.", "Small left effusion.", "Mild cardiomegaly."]
