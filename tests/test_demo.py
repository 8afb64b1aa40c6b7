"""``workbench demo`` end to end with every installed plugin step, on a small budget (``tests/helpers/small_demo.py``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from workbench.cli import build_cli
from workbench.host import create_plugin_manager


def test_demo_runs_every_plugin_step_and_writes_one_page(small_demo):
    assert small_demo.exit_code == 0, small_demo.output
    index = small_demo.index
    page = index.read_text()
    for section in ("Loaded plugins", "Pretraining", "Retrieval examples", "Vessel segmentation", "worst Betti-0 error first",
                    "Why the encoder decided", "Answers with explanations (reporting)", "majority baseline", "Report editing (reporting)",
                    "draft with an injected error"):
        assert section in page, section
    timings = json.loads((index.parent / "metrics.json").read_text())["demo_timings"]
    assert set(timings) >= {"phantoms_s", "contrastive-pretrain_s", "vessels_s", "vlm-explain_s", "reporting_s"}
    saved = json.loads((index.parent / "metrics.json").read_text())
    assert saved["pretrain"]["steps"] == 3
    # the grounding head is scored on held-out phrases, with the zero-shot comparison on the same ones
    grounding = saved["grounding"]
    assert grounding["steps"] == 3 and 0.0 <= grounding["overall"]["pointing"] <= 1.0
    assert grounding["zero_shot"]["overall"]["n"] == grounding["overall"]["n"] > 0
    assert "Phrase grounding" in page and "not chosen by their scores" in page
    # the counterfactual step runs at the demo's own settings here: its CAE must flip the classifier on the test phantoms
    explained = json.loads(next((index.parent / "counterfactual").glob("explain-*/metrics.json")).read_text())
    assert explained["flip_rate"] >= 0.8 and explained["flip_rate_cases"] >= 15
    # every section opens with one sentence on what the reader is looking at
    sections = re.findall(r'<section id="([^"]+)"[^>]*>(.*?)</section>', page, flags=re.S)
    assert sections and not [anchor for anchor, body in sections if 'class="lead"' not in body]
    # the headline figures a check reads from the demo's metrics.json, and what the run folder costs on disk
    assert saved["counterfactual"]["flip_rate"] == explained["flip_rate"]
    assert 0.0 <= saved["reporting"]["answer_accuracy"] <= 1.0 and 0.0 <= saved["vlm-explain"]["decision_accuracy"] <= 1.0
    assert 0.0 <= saved["vessels"]["dice"] <= 1.0
    on_disk = sum(path.stat().st_size for path in index.parent.rglob("*") if path.is_file() and path.name != "screenshot.png")
    assert 0.9 * on_disk <= saved["run_folder_bytes"] <= on_disk


def test_every_demo_step_section_validates_against_its_jobs_settings():
    import yaml

    from workbench.config import load_settings
    from workbench_plugins.contrastive.settings import PretrainSettings
    from workbench_plugins.counterfactual.settings import CaeTrainSettings, ClassifyTrainSettings
    from workbench_plugins.counterfactual.settings import ExplainSettings as CounterfactualExplainSettings
    from workbench_plugins.grounding.settings import GroundTrainSettings, ZeroShotSettings
    from workbench_plugins.reporting.settings import ReportingDemoSettings, ReportTrainSettings
    from workbench_plugins.vessels.settings import VesselTrainSettings
    from workbench_plugins.vlm_explain.settings import ExplainSettings as VlmExplainSettings

    options = yaml.safe_load(Path("configs/demo.yaml").read_text())["options"]
    counterfactual = options["counterfactual"]
    sections = [(PretrainSettings, options["contrastive-pretrain"]), (VesselTrainSettings, options["vessels"]),
                (GroundTrainSettings, {key: value for key, value in options["grounding"].items() if key != "zero_shot"}),
                (ZeroShotSettings, options["grounding"]["zero_shot"]),
                (VlmExplainSettings, {key: value for key, value in options["vlm-explain"].items() if key != "mining"}),
                (ClassifyTrainSettings, {"data": counterfactual["data"], **counterfactual["classify"]}),
                (CaeTrainSettings, {"data": counterfactual["data"], **counterfactual["cae"]}),
                (CounterfactualExplainSettings, {"data": counterfactual["data"], **counterfactual["explain"]}),
                (ReportingDemoSettings, options["reporting"])]
    reporting = options["reporting"]
    sections += [(ReportTrainSettings, {"data": reporting["data"], "model": job, **reporting[job]}) for job in ("explainer", "editor")]
    for settings_class, section in sections:
        load_settings(settings_class, None, [], defaults=section)  # raises naming the key on a typo
    assert set(options) == {"contrastive-pretrain", "vessels", "grounding", "counterfactual", "vlm-explain", "reporting"}


def test_a_demo_step_without_its_section_names_the_section(tmp_path):
    host = create_plugin_manager()
    result = CliRunner().invoke(build_cli(host), ["demo", f"run.output_root={tmp_path}", "data.cxr_studies=4", "data.fundus_images=2",
                                                  "run.device=cpu", "steps=[vessels]"], obj=host)
    assert result.exit_code != 0
    assert "demo step 'vessels' has no settings: give them under options.vessels" in str(result.exception)
