"""Retrieval, zero-shot and linear-probe metrics on features with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench_plugins.contrastive.metrics import labels_matrix, linear_probe, recall_at_k, retrieval_metrics, zero_shot_scores


def test_recall_counts_identical_reports_as_hits():
    similarity = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.1, 0.8], [0.0, 0.3, 0.9]])
    groups = torch.tensor([0, 0, 1])  # reports 0 and 1 are identical
    recall = recall_at_k(similarity, groups, groups, ks=(1, 2))
    # query 0 ranks text 1 first (same report): hit; query 1 ranks text 2 first: miss at 1, hit at 2; query 2: hit
    assert recall[1] == pytest.approx(2 / 3)
    assert recall[2] == pytest.approx(1.0)


def test_perfect_and_chance_retrieval():
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(200, 32, generator=generator), dim=-1)
    groups = torch.arange(200)
    perfect = retrieval_metrics(features, features, groups)
    assert perfect["i2t_R@1"] == 1.0 and perfect["t2i_R@10"] == 1.0
    assert perfect["chance_R@10"] == pytest.approx(10 / 200)
    shuffled = retrieval_metrics(features, F.normalize(torch.randn(200, 32, generator=generator), dim=-1), groups)
    assert shuffled["i2t_R@10"] < 0.15


def test_chance_accounts_for_duplicates():
    groups = torch.tensor([0] * 50 + list(range(1, 51)))
    chance = retrieval_metrics(torch.eye(100), torch.eye(100), groups, ks=(1,))["chance_R@1"]
    assert chance == pytest.approx((50 * 0.5 + 50 * 0.01) / 100)


def test_zero_shot_prefers_the_closer_prompt():
    positive = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    negative = -positive
    images = F.normalize(torch.tensor([[1.0, 0.1], [0.1, -1.0]]), dim=-1)
    probability = zero_shot_scores(images, positive, negative, logit_scale=10.0)
    assert probability.shape == (2, 2)
    assert probability[0, 0] > 0.99 and probability[1, 1] < 0.01


def test_linear_probe_separates_a_linear_signal():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(400, 2))
    features = rng.normal(size=(400, 16))
    features[:, 0] += 3 * labels[:, 0]
    features[:, 1] += 3 * labels[:, 1]
    result = linear_probe(features[:300], labels[:300], features[300:], labels[300:], ["a", "b"], fractions=(0.01, 1.0))
    assert result["100%"]["mean"] > 0.95
    assert result["1%"]["mean"] > 0.7  # topped up to two examples per class
    assert labels_matrix([{"a": 1}, {"b": 1}], ["a", "b"]).tolist() == [[1, -1], [-1, 1]]  # unlisted = unknown
    assert labels_matrix([{"a": 1}, {"b": 1}], ["a", "b"], missing=0).tolist() == [[1, 0], [0, 1]]
