"""The explanation maths on exact fixtures: decompositions, margins, agreement, deletion, energy in a box."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.errors import ConfigError
from workbench_plugins.vlm_explain.decomposition import (
    class_margins, concept_contributions, curve_auc, deletion_curves, mutual_knowledge, nonnegative_decomposition, remove_directions,
    softmax_scores, unit_rows,
)
from workbench_plugins.vlm_explain.similarity_maps import box_area_fraction, energy_in_box
from workbench_plugins.vlm_explain.zero_shot import ConceptSpace, check_classes, class_prompts, explain_embedding


def _concepts(count: int = 8, dim: int = 32, seed: int = 0) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed).normal(size=(count, dim)))


def test_nnls_recovers_a_known_nonnegative_combination_and_lasso_finds_its_support():
    concepts = _concepts()
    truth = np.array([0.0, 0.7, 0.0, 0.0, 1.3, 0.0, 0.2, 0.0])
    target = truth @ concepts
    np.testing.assert_allclose(nonnegative_decomposition(target, concepts, "nnls"), truth, atol=1e-8)
    lasso = nonnegative_decomposition(target, concepts, "lasso", alpha=1e-4)
    assert (lasso >= 0).all() and set(np.flatnonzero(lasso > 0.05)) == {1, 4, 6}
    np.testing.assert_allclose(lasso, truth, atol=0.05)
    # a direction no concept can make with non-negative weights gets no negative weight either
    assert (nonnegative_decomposition(-concepts[1], concepts, "nnls") >= 0).all()


def test_decomposition_refuses_an_empty_bank_and_an_unknown_method():
    with pytest.raises(ConfigError, match="concept bank is empty"):
        nonnegative_decomposition(np.ones(4), np.zeros((0, 4)))
    with pytest.raises(ConfigError, match="unknown decomposition method"):
        nonnegative_decomposition(np.ones(4), np.eye(4), method="pca")
    with pytest.raises(ConfigError, match="3 dimensions, the embedding 4"):
        nonnegative_decomposition(np.ones(4), np.eye(3))


def test_contributions_add_up_to_the_chosen_class_margin():
    concepts, classes = _concepts(), _concepts(3, seed=1)
    weights = np.array([0.5, 0.0, 0.25, 0.0, 1.0, 0.0, 0.0, 0.3])
    embedding = weights @ concepts
    margins = class_margins(concepts, classes, chosen=2)
    similarities = classes @ embedding
    expected = similarities[2] - np.mean(similarities[[0, 1]])
    assert concept_contributions(weights, margins).sum() == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ConfigError, match="at least two classes"):
        class_margins(concepts, classes[:1], chosen=0)


def test_projecting_out_directions_zeroes_their_similarity_and_keeps_the_rest():
    concepts = _concepts()
    vector = np.random.default_rng(3).normal(size=32)
    kept = remove_directions(vector, concepts[[0, 3]])
    np.testing.assert_allclose(concepts[[0, 3]] @ kept, 0.0, atol=1e-12)
    # the same direction twice is removed once; a direction orthogonal to the span is untouched
    np.testing.assert_allclose(remove_directions(vector, concepts[[0, 0]]), remove_directions(vector, concepts[[0]]), atol=1e-12)
    np.testing.assert_allclose(remove_directions(vector, np.zeros((0, 32))), vector)


def test_mutual_knowledge_is_one_for_identical_rankings_and_low_for_opposite_ones():
    scores = np.array([0.9, 0.5, 0.3, 0.2, 0.1, 0.05, 0.0, 0.0])
    same = mutual_knowledge(scores, scores * 2.0, k=3)
    assert same["score"] == pytest.approx(1.0) and same["top_k_overlap"] == 1.0 and same["weighted_tau"] == pytest.approx(1.0)
    reversed_scores = scores[::-1].copy() + np.linspace(0, 0.01, 8)
    opposite = mutual_knowledge(scores, reversed_scores, k=3)
    assert opposite["top_k_overlap"] == 0.0 and opposite["weighted_tau"] < -0.5 and opposite["score"] < 0.25
    half = mutual_knowledge(np.array([3.0, 2.0, 0.0, 0.0]), np.array([3.0, 0.0, 2.0, 0.0]), k=2)
    assert half["top_k_overlap"] == 0.5


def test_curve_auc_is_normalised_over_the_number_removed():
    assert curve_auc(np.arange(11), np.ones(11)) == pytest.approx(1.0)
    assert curve_auc(np.arange(5), np.linspace(1, 0, 5)) == pytest.approx(0.5)


def test_deletion_of_the_concepts_that_make_the_decision_beats_random_ones():
    rng = np.random.default_rng(4)
    dim = 64
    concepts = unit_rows(rng.normal(size=(20, dim)))
    classes = unit_rows(np.stack([concepts[0] + concepts[1], concepts[5], concepts[9]]))
    embedding = unit_rows(0.8 * concepts[0] + 0.6 * concepts[1] + 0.05 * rng.normal(size=dim))[0]
    space = ConceptSpace([f"c{i}" for i in range(20)], concepts, np.zeros(dim), concepts)
    explained = explain_embedding(embedding, space, ["a", "b", "c"], classes, logit_scale=20.0, top_k=2, method="nnls",
                                  deletion_k=6, random_draws=20, seed=1)
    assert explained.chosen == 0 and explained.probabilities.sum() == pytest.approx(1.0)
    assert [row["concept"] for row in explained.top_concepts(2)] == ["c0", "c1"]
    assert explained.deletion.top[0] == pytest.approx(explained.probabilities[0])
    assert explained.deletion.auc_top < explained.deletion.auc_random - 0.2
    assert explained.deletion.top[2] < 0.5 < explained.deletion.random[2]
    assert explained.residual < 0.4 and explained.mutual["top_k_overlap"] == 1.0


def test_deletion_curves_are_seeded():
    concepts = _concepts(10, 16)
    classes = _concepts(2, 16, seed=7)
    contributions = np.arange(10, dtype=float)
    first = deletion_curves(concepts[0], concepts, contributions, classes, 0, 10.0, max_k=4, draws=3, seed=5)
    again = deletion_curves(concepts[0], concepts, contributions, classes, 0, 10.0, max_k=4, draws=3, seed=5)
    np.testing.assert_array_equal(first.random_draws, again.random_draws)
    assert first.random_draws.shape == (3, 5) and first.top.shape == (5,)
    assert softmax_scores(concepts[0], classes, 10.0).sum() == pytest.approx(1.0)


def test_a_class_list_of_one_is_refused_and_prompts_read_like_reports():
    with pytest.raises(ConfigError, match="at least two classes"):
        check_classes(["pleural effusion"])
    with pytest.raises(ConfigError, match="at least two classes"):
        check_classes(["effusion, Effusion"])
    assert check_classes(["pleural effusion,cardiomegaly", "pneumothorax"]) == ["pleural effusion", "cardiomegaly", "pneumothorax"]
    assert class_prompts("pleural_effusion")[:2] == ["Pleural effusion.", "Pleural effusion is present."]
    assert class_prompts("There is a left pleural effusion.") == ["There is a left pleural effusion."]


def test_energy_in_box_is_the_share_of_positive_mass_inside_it():
    heatmap = np.zeros((20, 30))
    heatmap[5:10, 10:20] = 2.0
    heatmap[0, 0] = -5.0  # negative values carry no energy
    box = {"x": 10, "y": 5, "w": 10, "h": 5}
    assert energy_in_box(heatmap, box) == pytest.approx(1.0)
    uniform = np.ones((20, 30))
    assert energy_in_box(uniform, box) == pytest.approx(box_area_fraction(box, (20, 30))) == pytest.approx(50 / 600)
    assert energy_in_box(np.zeros((20, 30)), box) == 0.0


def test_examples_are_the_first_ones_or_the_first_correct_ones():
    from workbench_plugins.vlm_explain.jobs import ExplainedRecord, pick_examples

    items = [ExplainedRecord({"id": str(index)}, None, None, {"correct": correct})  # type: ignore[arg-type]
             for index, correct in enumerate([False, None, True, False, True, True])]
    assert [item.record["id"] for item in pick_examples(items, 2, "first")] == ["0", "1"]
    assert [item.record["id"] for item in pick_examples(items, 2, "correct")] == ["2", "4"]
    assert [item.record["id"] for item in pick_examples(items, 5, "correct")] == ["2", "4", "5"]
