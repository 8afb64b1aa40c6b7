"""The ``counterfactual`` demo step: classifier, CAE and explained cases land on the demo page."""

from __future__ import annotations

import json

from click.testing import CliRunner

from workbench.cli import build_cli
from workbench.host import create_plugin_manager


def test_demo_step_explains_phantom_cases(tmp_path):
    host = create_plugin_manager()
    small = [f"options.counterfactual.{key}" for key in ("data.phantoms.n=40", "classify.train.steps=3", "cae.train.steps=2",
                                                         "explain.max_cases=3", "explain.shown=2", "explain.steps=3")]
    result = CliRunner().invoke(build_cli(host), ["demo", "--config", "configs/demo.yaml", f"run.output_root={tmp_path}", "data.cxr_studies=4",
                                                  "data.fundus_images=2", "run.device=cpu", "steps=[counterfactual]", *small],
                                obj=host, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    index = next(line for line in reversed(result.output.strip().splitlines()) if line.endswith("index.html"))
    page = open(index, encoding="utf-8").read()
    assert "Counterfactual explanations (CAE)" in page and "counterfactual/explain-" in page
    assert "Flip rate" in page and "correctly classified test images" in page and "held out from training" in page and "the pipeline, not the method" not in page
    assert "Original, reconstruction, counterfactual, CAE saliency, Grad-CAM" in page
    timings = json.loads(open(index.replace("index.html", "metrics.json"), encoding="utf-8").read())["demo_timings"]
    assert "counterfactual_s" in timings


def test_demo_results_put_the_flip_rate_on_top():
    from workbench_plugins.counterfactual.demo import demo_results

    summary = {"flip_rate": 0.75, "flip_rate_cases": 4, "explained": 5, "reconstruction_kept_rate": 1.0, "cases": []}
    results = demo_results("demo-classifier:v1", "demo-cae:v1", summary)
    assert results["flip_rate"] == 0.75 and results["cases"] == 4 and results["explained"] == 5
    assert results["classifier"] == "demo-classifier:v1" and results["cae"] == "demo-cae:v1" and results["explain"] is summary
    assert demo_results(None, None, {})["flip_rate"] is None
