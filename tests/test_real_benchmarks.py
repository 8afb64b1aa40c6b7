"""The real-data benchmarks run end to end in their tiny mode and write the JSON the runner and the lead read."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.shared_data import _SHARED, requires_covid_chestxray, requires_pediatric_cxr, requires_tbx11k

PROVENANCE_KEYS = {"benchmark", "git_commit", "uncommitted_changes", "configs", "tiny", "selected_on", "scored_on", "test_scored_once", "split_sizes",
                   "settings", "wall_seconds", "cpu_seconds", "summary"}


@pytest.fixture
def shared_data(monkeypatch):
    """Point the benchmarks at the shared data folder the test helpers found."""
    monkeypatch.setenv("WORKBENCH_SHARED_DATA", str(_SHARED))


def check_provenance(result: dict, name: str, configs: list[str], out: Path) -> None:
    assert PROVENANCE_KEYS <= set(result), PROVENANCE_KEYS - set(result)
    assert json.loads(out.read_text(encoding="utf-8"))["benchmark"] == name == result["benchmark"]
    assert [entry["path"] for entry in result["configs"]] == configs
    assert all(re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) for entry in result["configs"])
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", result["git_commit"])
    assert (result["selected_on"], result["scored_on"], result["tiny"]) == ("val", "test", True)
    assert result["wall_seconds"] > 0 and result["cpu_seconds"] > 0
    assert "/work/" not in out.read_text(encoding="utf-8"), "a machine path in the result"


def test_benchmark_declarations():
    from benchmarks import real_counterfactual, real_grounding, real_pretrain

    for module in (real_pretrain, real_grounding, real_counterfactual):
        declared = module.BENCHMARK
        assert declared["name"] == module.__name__.rsplit(".", 1)[1] and declared["cpu_budget_minutes"] > 0
        assert all((Path(real_pretrain.REPO_ROOT) / path).is_file() for path in declared["configs"])
        assert callable(module.run) and callable(module.main)


def test_deletion_insertion_curves_follow_the_ranking():
    from benchmarks.real_saliency_curves import deletion_insertion_auc, perturbation_series

    image = torch.zeros(1, 8, 8)
    image[0, :4] = 1.0  # the top half bright: a "classifier" reading the top half's mean
    top_half = np.zeros((8, 8))
    top_half[:4] = 1.0
    deletion, insertion, shares = perturbation_series(image, top_half, points=3)
    assert shares.tolist() == [0.0, 0.5, 1.0]
    assert torch.equal(deletion[0], image) and torch.allclose(deletion[1, 0, :4], torch.full((4, 8), 0.5))
    assert torch.equal(insertion[2], image) and torch.equal(insertion[1, 0, :4], image[0, :4])

    def probability_of(images: torch.Tensor) -> torch.Tensor:
        bright = images[:, 0, :4].mean(dim=(1, 2))
        return torch.stack([1 - bright, bright], dim=1)

    good = deletion_insertion_auc(probability_of, image, top_half, class_index=1, points=9)
    bad = deletion_insertion_auc(probability_of, image, 1 - top_half, class_index=1, points=9)
    assert good["deletion_auc"] < bad["deletion_auc"] and good["insertion_auc"] > bad["insertion_auc"]
    with pytest.raises(ValueError, match="saliency shape"):
        perturbation_series(image, np.zeros((4, 4)))


def test_an_image_tower_written_from_one_encoder_starts_another(tmp_path):
    from benchmarks.real_pretrain import image_tower_file
    from workbench.host import create_plugin_manager
    from workbench.registry import create_model

    create_plugin_manager()  # registers the presets
    options = {"image_size": 32, "context_length": 16, "pretrained_text": None}
    source = create_model("dual-vit-tiny-conv-minilm", **options)
    path = image_tower_file(source.state_dict(), tmp_path / "tower.safetensors")
    started = create_model("dual-vit-tiny-conv-minilm", pretrained_image=str(path), **options)
    fresh = create_model("dual-vit-tiny-conv-minilm", **options)
    for key, value in source.clip.visual.state_dict().items():
        assert torch.equal(started.clip.visual.state_dict()[key], value), key
    assert not torch.equal(fresh.clip.visual.state_dict()["proj"], source.clip.visual.state_dict()["proj"])
    assert not torch.equal(started.clip.text.state_dict()["proj.weight"], source.clip.text.state_dict()["proj.weight"])  # the text tower is not carried
    with pytest.raises(RuntimeError, match="no clip.visual"):
        image_tower_file({"other.weight": torch.zeros(2)}, tmp_path / "none.safetensors")


def test_a_resumed_benchmark_continues_the_newest_run_made_with_its_settings(tmp_path):
    from benchmarks.real_counterfactual import curve_rows, resumable_run, scored_so_far
    from workbench.config import settings_to_yaml
    from workbench.errors import ConfigError
    from workbench_plugins.counterfactual.settings import ClassifyTrainSettings

    settings = ClassifyTrainSettings()
    for name, checkpoint in (("classify-20260101-000000", True), ("classify-20260102-000000", True), ("classify-20260103-000000", False)):
        folder = tmp_path / name
        (folder / "checkpoints" / ("step-00000010" if checkpoint else "")).mkdir(parents=True)
        (folder / "config.yaml").write_text(settings_to_yaml(settings), encoding="utf-8")
    assert resumable_run(tmp_path, "classify", settings) == tmp_path / "classify-20260102-000000"  # the newest with a checkpoint
    assert resumable_run(tmp_path, "cae", settings) is None
    with pytest.raises(ConfigError, match="classify-20260102-000000: made with other settings"):
        resumable_run(tmp_path, "classify", settings.model_copy(update={"examples": settings.examples + 1}))

    scores = tmp_path / "scores.jsonl"
    scores.write_text('{"id": "a", "auc": {}}\n{"id": "b", "au', encoding="utf-8")  # stopped while writing b
    assert list(scored_so_far(scores)) == ["a"]
    rows = [{"id": str(index)} for index in range(10)]
    drawn = curve_rows(rows, 4, seed=0)
    assert len(drawn) == 4 and drawn == sorted(drawn, key=lambda row: int(row["id"])) and drawn == curve_rows(rows, 4, seed=0)
    assert curve_rows(rows[:3], 4, seed=0) == rows[:3]


@requires_covid_chestxray
def test_real_pretrain_tiny(tmp_path, shared_data):
    from benchmarks.real_pretrain import CONFIG, INITS, PHANTOM_CONFIG, run

    out = tmp_path / "real_pretrain.json"
    result = run(out, tiny=True)
    check_provenance(result, "real_pretrain", [CONFIG, PHANTOM_CONFIG], out)
    assert result["split_sizes"] == {"train": 16, "val": 12, "test": 12}
    candidates = result["selection"]["candidates"]
    assert [(row["init"], row["checkpoint_step"]) for row in candidates] == [(init, step) for init in INITS for step in (1, 2)]
    best = max(row["val_selection_score"] for row in candidates)
    chosen = [row for row in candidates if (row["init"], row["checkpoint_step"]) == (result["selection"]["chosen_init"],
                                                                                       result["selection"]["chosen_checkpoint_step"])]
    assert len(chosen) == 1 and chosen[0]["val_selection_score"] == best
    assert result["phantom_encoder"]["stored"].startswith("contrastive-phantom:") and result["phantom_encoder"]["steps"] == 2
    for encoder in ("pretrained", "random_image_tower"):
        figures = result["test"][encoder]
        assert figures["pairs"] == 12
        assert figures["retrieval"]["chance_k_over_N_R@10"] == pytest.approx(10 / 12, abs=1e-3)
        assert figures["retrieval"]["chance_R@10"] >= figures["retrieval"]["chance_k_over_N_R@10"] - 1e-3
        assert all(0 <= figures["retrieval"][f"{way}_R@{k}"] <= 1 for way in ("i2t", "t2i") for k in (1, 5, 10))
        assert set(figures["linear_probe_auroc_covid_19"]) == {"10%", "100%"}
    assert {key: type(value["met"]) for key, value in result["targets"].items()} == {
        "i2t_R@10_at_least_2x_chance": bool, "zeroshot_auroc_at_least_floor_plus_0.1": bool,
        "linear_probe_auroc_100%_at_least_floor_plus_0.1": bool}


@requires_tbx11k
def test_real_grounding_tiny(tmp_path, shared_data):
    from benchmarks.real_grounding import CONFIG, PHRASE_FORMS, run

    out = tmp_path / "real_grounding.json"
    result = run(out, tiny=True)
    check_provenance(result, "real_grounding", [CONFIG], out)
    assert result["split_sizes"] == {"train": 6, "val": 4, "test": 4}
    assert result["selection"]["chosen_encoder"] == "random (tiny mode)"
    for form in PHRASE_FORMS:
        for side in ("head", "baseline_mean_training_box", "zero_shot_occlusion", "zero_shot_similarity"):
            overall = result["test"][form][side]["overall"]
            assert overall["n"] >= 4 and all(0 <= overall[key] <= 1 for key in ("box_acc@0.5", "miou", "pointing"))
    assert result["test"]["with-place"]["baseline_keyed_by"].startswith("zone")


@pytest.mark.slow
@requires_pediatric_cxr
def test_real_counterfactual_tiny(tmp_path, shared_data):
    from benchmarks.real_counterfactual import CAE_CONFIG, CLASSIFY_CONFIG, METHODS, run

    out = tmp_path / "real_counterfactual.json"
    result = run(out, tiny=True)
    check_provenance(result, "real_counterfactual", [CLASSIFY_CONFIG, CAE_CONFIG], out)
    assert result["split_sizes"] == {"train": 1600, "val": 200, "test": 200}
    test = result["test"]
    assert test["cases"] == 3 and 0 <= test["correctly_classified"] <= 3
    for key in ("deletion_auc", "insertion_auc"):
        assert set(test[key]) == set(METHODS)
        assert all(value is None or 0 <= value <= 1 for value in test[key].values())
    assert set(METHODS) == {"cae", "gradcam", "gradcampp", "occlusion", "random"}
    assert set(test["seconds_per_explanation"]) == {"cae", "gradcam", "gradcampp", "occlusion"}
    assert test["seconds_per_explanation"]["cae"] is None or test["seconds_per_explanation"]["cae"] > 0
    assert test["correctly_classified"] == 0 or (0 <= test["l1"] <= 1 and -1 <= test["ssim"] <= 1)
    assert test["flip_rate"] is None or not math.isnan(test["flip_rate"])
    assert test["curve_cases"] == test["correctly_classified"] and result["settings"]["resumed_runs"] == {"classifier": None, "cae": None}

    # Stopped and resumed: the finished runs are taken as they are and the figures come out the same.
    resumed = run(out, tiny=True, resume=True)
    runs = sorted(path.name for path in (tmp_path / "real_counterfactual_work" / "runs").iterdir() if not path.name.startswith("explain"))
    assert resumed["settings"]["resumed_runs"] == {"classifier": runs[1], "cae": runs[0]}
    for key in ("flip_rate", "ssim", "l1", "deletion_auc", "insertion_auc", "curve_cases"):
        assert resumed["test"][key] == test[key], key
