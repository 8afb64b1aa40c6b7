"""``workbench demo`` end to end with every installed plugin step, on a small budget."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from workbench.cli import build_cli
from workbench.host import create_plugin_manager


def test_demo_runs_every_plugin_step_and_writes_one_page(tmp_path):
    host = create_plugin_manager()
    store = tmp_path / "store"
    small = [f"options.contrastive-pretrain.{key}" for key in (
        "data.options.n=64", "model.options.image_size=32", "model.options.context_length=32", "train.steps=3", "train.batch_size=8",
        "train.checkpoint_every=3", f"save.store={store}")]
    small += [f"options.vessels.{key}" for key in (
        "data.patch_size=32", "data.patches_per_image=4", "model.options.channels=[8, 16, 32]", "model.options.strides=[2, 2]",
        "train.steps=3", "train.batch_size=8", "train.checkpoint_every=3", "inference.roi_size=64", f"save.store={store}")]
    result = CliRunner().invoke(build_cli(host), ["demo", "--config", "configs/demo.yaml", f"run.output_root={tmp_path}",
                                                  "data.cxr_studies=8", "data.fundus_images=2", "run.device=cpu", *small],
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
    # the counterfactual step runs at the demo's own settings here: its CAE must flip the classifier on the test phantoms
    explained = json.loads(next((index.parent / "counterfactual").glob("explain-*/metrics.json")).read_text())
    assert explained["flip_rate"] >= 0.8 and explained["flip_rate_cases"] >= 15


def test_every_demo_step_section_validates_against_its_jobs_settings():
    import yaml

    from workbench.config import load_settings
    from workbench_plugins.contrastive.settings import PretrainSettings
    from workbench_plugins.counterfactual.settings import CaeTrainSettings, ClassifyTrainSettings
    from workbench_plugins.counterfactual.settings import ExplainSettings as CounterfactualExplainSettings
    from workbench_plugins.grounding.settings import GroundSettings
    from workbench_plugins.vessels.settings import VesselTrainSettings
    from workbench_plugins.vlm_explain.settings import ExplainSettings as VlmExplainSettings

    options = yaml.safe_load(Path("configs/demo.yaml").read_text())["options"]
    counterfactual = options["counterfactual"]
    sections = [(PretrainSettings, options["contrastive-pretrain"]), (VesselTrainSettings, options["vessels"]),
                (GroundSettings, options["grounding"]), (VlmExplainSettings, options["vlm-explain"]),
                (ClassifyTrainSettings, {"data": counterfactual["data"], **counterfactual["classify"]}),
                (CaeTrainSettings, {"data": counterfactual["data"], **counterfactual["cae"]}),
                (CounterfactualExplainSettings, {"data": counterfactual["data"], **counterfactual["explain"]})]
    for settings_class, section in sections:
        load_settings(settings_class, None, [], defaults=section)  # raises naming the key on a typo
    assert set(options) == {"contrastive-pretrain", "vessels", "grounding", "counterfactual", "vlm-explain"}


def test_a_demo_step_without_its_section_names_the_section(tmp_path):
    host = create_plugin_manager()
    result = CliRunner().invoke(build_cli(host), ["demo", f"run.output_root={tmp_path}", "data.cxr_studies=4", "data.fundus_images=2",
                                                  "run.device=cpu", "steps=[vessels]"], obj=host)
    assert result.exit_code != 0
    assert "demo step 'vessels' has no settings: give them under options.vessels" in str(result.exception)
