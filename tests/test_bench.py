"""``workbench bench``: discovery, the selection discipline, provenance, and every benchmark's tiny run end to end."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers.shared_data import CHASE_DB1
from workbench.bench import bench_command, discover, load_entry, parse_models, run_benchmark
from workbench.errors import ConfigError
from workbench.fsutil import sha256_of_file
from workbench.provenance import PROVENANCE_KEYS, Provenance, folder_digest, phantom_digest
from workbench.selection import Selection, SelectionError, selection_record

REPO_ROOT = Path(__file__).resolve().parents[1]
# Every benchmark the runner drives with a tiny mode, and a figure its JSON must hold (a dotted path).
TINY_FIGURES = {
    "topology_check": "fundus_phantom.median_ms",
    "data_loading": "results.no_cache.median_images_per_s",
    "counterfactual_phantom": "seconds_per_explanation.cae",
    "contrastive_objectives": "methods.clip.i2t_R@10",
    "grounding_phantom": "zero_shot.occlusion.overall.pointing",
    "reporting_phantom": "answer_accuracy",
    "vlm_explain_phantom": "deletion_auc_topk",
    "vessel_loss_overhead": "training_step.dice_ce.median_ms",
    "vessels_chase": "rows.dice_ce.dice",
    "vessels_vs_monai": "train_step_ratio",
    "topology_scaling": "cases.3d_32.median_s",
    "pretrain_step_profile": "batch_scaling.0.samples_per_s",
}
TRAINS_MODELS = {"counterfactual_phantom": {"classifier", "cae"}, "contrastive_objectives": {"clip", "siglip"},
                 "grounding_phantom": {"encoder", "grounding_head"}, "reporting_phantom": {"encoder", "explainer", "editor"},
                 "vlm_explain_phantom": {"encoder"}, "vessels_chase": {"dice_ce", "skeleton_recall"}}


# --- selection -------------------------------------------------------------------------------------------------

def test_selection_chooses_on_val_and_scores_test_once():
    on_val = {"a": 0.4, "b": 0.7, "c": 0.7}
    selection = Selection({"a": 1, "b": 2, "c": 3}, metric="pointing", mode="max")
    looked_at = []
    chosen = selection.choose(lambda setting: looked_at.append(setting) or on_val["abc"[setting - 1]])
    assert looked_at == [1, 2, 3] and chosen == 2  # a tie goes to the first declared
    assert selection.score(lambda setting: setting * 10) == 20
    with pytest.raises(SelectionError, match="test was already scored"):
        selection.score(lambda setting: setting)
    with pytest.raises(SelectionError, match="already measured"):
        selection.choose(lambda setting: 1.0)
    record = selection.record()
    assert record["split"] == "val" and record["rule"] == "max pointing on val" and record["scored_split"] == "test"
    assert record["chosen"] == "b" and record["chosen_setting"] == 2 and record["candidates"]["a"] == {"setting": 1, "pointing": 0.4}


def test_selection_min_rule_skips_candidates_without_a_number():
    selection = Selection({"x": "x", "y": "y", "z": "z"}, metric="loss", mode="min")
    assert selection.choose(lambda setting: {"x": 0.3, "y": float("nan"), "z": None}[setting]) == "x"
    assert selection.record()["candidates"]["y"]["loss"] is None


def test_selection_refuses_scoring_first_and_choosing_on_the_scored_split():
    selection = Selection({"x": 1}, metric="dice")
    with pytest.raises(SelectionError, match="choose on val before scoring test"):
        selection.score(lambda setting: setting)
    with pytest.raises(ValueError, match="same split"):
        Selection({"x": 1}, metric="dice", split="test", scored_split="test")
    with pytest.raises(SelectionError, match="no candidate"):
        Selection({"x": 1}, metric="dice").choose(lambda setting: None)


def test_selection_record_of_two_settings_names_each_rule():
    window, threshold = Selection({"w": [0.5]}, metric="pointing"), Selection({"0.3": 0.3, "0.5": 0.5}, metric="miou")
    window.choose(lambda setting: 0.5)
    threshold.choose(lambda setting: {0.3: 0.2, 0.5: 0.1}[setting])
    record = selection_record(window=window, threshold=threshold)
    assert record["split"] == "val" and record["chosen"] == {"window": [0.5], "threshold": 0.3}
    assert record["rule"] == "window: max pointing on val; threshold: max miou on val"
    assert selection_record() is None and selection_record(window=window)["setting"] == "window"


# --- provenance ------------------------------------------------------------------------------------------------

def test_folder_digest_follows_the_file_list_and_sizes(tmp_path):
    (tmp_path / "a.png").write_bytes(b"12345")
    first = folder_digest(tmp_path)
    (tmp_path / "a.png").write_bytes(b"54321")  # same size: same listing
    assert folder_digest(tmp_path) == first and first["files"] == 1
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(b"1")
    assert folder_digest(tmp_path)["listing_sha256"] != first["listing_sha256"]
    with pytest.raises(ConfigError, match="not a data folder"):
        folder_digest(tmp_path / "missing")


def test_phantom_digest_names_seed_and_generator_version():
    digest = phantom_digest("phantom-cxr", 40, 3, 128)
    assert digest["seed"] == 3 and digest["n"] == 40 and len(digest["generator_sha256"]) == 64
    assert digest["generator_sha256"] == phantom_digest("phantom-fundus", 1, 0, 64)["generator_sha256"]


def test_provenance_write_adds_every_key_atomically(tmp_path):
    provenance = Provenance("unit", tiny=True, device="cpu")
    config = provenance.config("configs/demo.yaml")
    provenance.phantoms("phantom-cxr", 8, 0, 128, used_for="unit")
    selection = Selection({"a": 1}, metric="m")
    selection.choose(lambda setting: 1.0)
    payload = provenance.write(tmp_path / "out.json", {"figure": 1.5}, scored_split="test", selection=selection.record())
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved == json.loads(json.dumps(payload, default=str)) and [path.name for path in tmp_path.iterdir()] == ["out.json"]
    assert set(PROVENANCE_KEYS) <= set(saved["provenance"])
    assert saved["provenance"]["configs"] == [{"path": "configs/demo.yaml", "sha256": sha256_of_file(config)}]
    assert saved["provenance"]["splits"] == {"selection": "val", "scored": "test"} and saved["scored_split"] == "test"
    assert len(saved["provenance"]["git"]["commit"]) == 40 and saved["provenance"]["cpu_seconds"] >= 0
    with pytest.raises(ValueError, match="provenance"):
        provenance.write(tmp_path / "clash.json", {"provenance": 1}, scored_split=None)


# --- discovery and the command ---------------------------------------------------------------------------------

def test_every_benchmark_is_declared_with_a_budget_and_existing_configs():
    benchmarks = discover()
    assert set(TINY_FIGURES) | {"pretrain_vs_open_clip"} <= set(benchmarks)
    for spec in benchmarks.values():
        assert spec.cpu_budget_minutes > 0 and spec.measures, spec.name
        assert all((REPO_ROOT / config).is_file() for config in spec.configs), spec.name


def test_list_shows_budget_and_measures():
    result = CliRunner().invoke(bench_command, ["--list"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("grounding_phantom "))
    budget = discover()["grounding_phantom"].cpu_budget_minutes
    assert line.split()[1] == f"{budget:g}" and budget >= 60 and "pointing" in line  # its committed run took 77 CPU minutes


def test_a_broken_declaration_names_its_file(tmp_path):
    (tmp_path / "half.py").write_text('BENCHMARK = {"name": "half", "cpu_budget_minutes": 1}\ndef run(out_path, tiny=False): pass\n')
    with pytest.raises(ConfigError, match=r"half.py: BENCHMARK lacks configs, measures"):
        discover(tmp_path)
    (tmp_path / "half.py").write_text('BENCHMARK = {"name": "half", "cpu_budget_minutes": 1, "configs": [], "measures": "x"}\n')
    with pytest.raises(ConfigError, match=r"half.py: a benchmark needs a top-level run\(\)"):
        discover(tmp_path)


def test_only_a_benchmark_whose_run_takes_resume_can_resume():
    with pytest.raises(ConfigError, match="grounding_phantom cannot resume"):
        run_benchmark("grounding_phantom", resume=True)
    assert "resume" in inspect.signature(load_entry(discover()["real_counterfactual"])).parameters


def test_models_are_named_by_role_and_need_their_store():
    assert parse_models(["encoder=contrastive-phantom:v3"]) == {"encoder": "contrastive-phantom:v3"}
    with pytest.raises(ConfigError, match="ROLE=NAME"):
        parse_models(["contrastive-phantom"])
    with pytest.raises(ConfigError, match="--store"):
        run_benchmark("grounding_phantom", tiny=True, models={"encoder": "x:v1"})
    with pytest.raises(ConfigError, match="trains no model called encodr; it takes"):
        run_benchmark("grounding_phantom", tiny=True, models={"encodr": "x:v1"}, store=Path("unused"))
    with pytest.raises(ConfigError, match="unknown benchmark 'nope'"):
        run_benchmark("nope")


# --- tiny runs, end to end -------------------------------------------------------------------------------------

def _at(payload: dict, dotted: str):
    for key in dotted.split("."):
        payload = payload[int(key)] if isinstance(payload, list) else payload[key]
    return payload


# The CHASE_DB1 runs predict full 999x960 images and score all 8 test images' second observer: ~30 s on a busy
# 2-core CPU, so they run with -m slow (and only where the shared data is).
SLOW_TINY = {"vessels_chase"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_TINY else name for name in sorted(TINY_FIGURES)])
def test_tiny_run_writes_its_figures_with_provenance(name, tmp_path):
    if name.startswith("vessels_chase") and not (CHASE_DB1 / "Image_11L_1stHO.png").is_file():
        pytest.skip("CHASE_DB1 not found: set WORKBENCH_SHARED_DATA to the shared data folder")
    out = run_benchmark(name, tiny=True, work_dir=tmp_path / "work", out=tmp_path / f"{name}.json")
    saved = json.loads(out.read_text())
    figure = _at(saved, TINY_FIGURES[name])
    assert isinstance(figure, (int, float)) and not math.isnan(figure), (name, figure)
    provenance = saved["provenance"]
    assert set(PROVENANCE_KEYS) <= set(provenance) and {"selection", "scored_split"} <= set(saved)
    assert provenance["benchmark"] == name and provenance["tiny"] is True and provenance["wall_seconds"] > 0
    assert {"cpu_model", "cpu_cores", "torch", "device"} <= set(provenance["machine"]) and provenance["threads"]["torch_threads"] >= 1
    assert provenance["data"] and all(entry.get("generator_sha256") or entry.get("listing_sha256") for entry in provenance["data"])
    declared = discover()[name].configs
    assert [entry["path"] for entry in provenance["configs"]] == declared
    assert all(entry["sha256"] == sha256_of_file(REPO_ROOT / entry["path"]) for entry in provenance["configs"])
    weights = {sha256_of_file(path) for path in (tmp_path / "work").rglob("model.safetensors")}
    assert {entry["role"] for entry in provenance["models"]} == TRAINS_MODELS.get(name, set())
    assert all(entry["sha256"] in weights and entry["trained_by_benchmark"] for entry in provenance["models"])
    assert provenance["splits"]["scored"] == saved["scored_split"]
    if name == "vessels_chase":  # each variant's post-processing chosen on val by the declared rule, test scored once
        selection = saved["selection"]
        assert selection["split"] == "val" and saved["scored_split"] == "test" and provenance["splits"]["selection"] == "val"
        assert set(selection["settings"]) == {"dice_ce", "skeleton_recall"}
        for variant, record in selection["settings"].items():
            assert record["split"] == "val" and record["scored_split"] == "test" and record["scored"] is True
            assert record["chosen"] in record["candidates"] and record["chosen_setting"] == record["candidates"][record["chosen"]]["setting"]
            assert saved["rows"][variant]["setting"] == record["chosen"] == saved["chosen"][variant]["name"]
            grid = [row["setting"] for row in saved["val_grids"][variant]]  # declared order, the plainest first
            assert sorted(grid) == sorted(record["candidates"]) and grid[0] == "no flips, nothing removed"
        assert saved["images"] == {"val": 1, "test": 1} and "dice_ce plain (no flips, nothing removed)" in saved["rows"]
    if name == "counterfactual_phantom":  # the CAE checkpoint chosen on val among the final model and train.store_steps
        selection = saved["selection"]
        assert selection["split"] == "val" and selection["scored"] and set(selection["candidates"]) == {"final", "step 2"}
        assert saved["settings"]["cae"] == selection["chosen_setting"] and saved["settings"]["eval_split"] == ["test"]
    if name == "contrastive_objectives":  # each objective's setting chosen on val, test scored once, equal wall-clock budget
        selection = saved["selection"]
        assert selection["split"] == "val" and saved["scored_split"] == "test" and provenance["splits"]["selection"] == "val"
        for objective in ("clip", "siglip"):
            record = selection["settings"][objective]
            assert record["scored"] and record["metric"] == "i2t_R@10" and record["chosen"] in record["candidates"]
            assert all(candidate["i2t_R@10"] is not None for candidate in record["candidates"].values())
            assert saved["methods"][objective]["setting"] == record["chosen"]
        calibration = saved["calibration"]
        assert calibration["reference"] == "clip" and calibration["steps"]["clip"] == 2 and calibration["step_seconds"]["siglip"] > 0
        assert saved["methods"]["siglip"]["steps"] == calibration["steps"]["siglip"]
    if name == "grounding_phantom":  # chosen on val, test scored once
        selection = saved["selection"]
        assert selection["split"] == "val" and saved["scored_split"] == "test" and provenance["splits"]["selection"] == "val"
        window = selection["settings"]["zero_shot.window"]
        assert window["scored"] and window["chosen_setting"] == saved["zero_shot"]["occlusion"]["window"]
        assert saved["zero_shot"]["occlusion"]["miou_threshold"] == selection["chosen"]["boxes.miou_threshold"]


def test_the_3d_vessel_tree_of_the_scaling_benchmark_is_one_tube_tree_and_cuts_break_it():
    import cc3d

    from benchmarks.topology_scaling import cut, vessel_tree_3d
    from workbench_plugins.vessels.topology.check import check_mask

    tree = vessel_tree_3d(48, depth=4)
    assert tree.shape == (48, 48, 48) and 0.002 < tree.mean() < 0.2
    assert cc3d.connected_components(tree, connectivity=26).max() == 1  # branches meet their parents
    report = check_mask(cut(tree, cuts=4), tree)
    assert report.reference_components == 1 and report.n_components > 1 and report.dice < 1.0


def test_results_hold_no_machine_path_of_the_repository(tmp_path, monkeypatch):
    from workbench.provenance import REPO_ROOT as ROOT, portable

    monkeypatch.setenv("WORKBENCH_SHARED_DATA", str(tmp_path / "data"))
    results = {"overrides": [f"run.output_root={ROOT / 'runs' / 'bench'}", f"data.root={tmp_path / 'data' / 'CHASE_DB1'}", "lr=0.1"],
               "nested": {"path": str(ROOT.parent / "elsewhere" / "x.png"), "n": 3}}
    assert portable(results) == {"overrides": ["run.output_root=runs/bench", "data.root=../shared/data/CHASE_DB1", "lr=0.1"],
                                 "nested": {"path": "../elsewhere/x.png", "n": 3}}
    written = Provenance("tiny_check", tiny=True).write(tmp_path / "out.json", results, scored_split="test")
    assert str(ROOT) not in json.dumps(written["overrides"]) and written["nested"]["n"] == 3
