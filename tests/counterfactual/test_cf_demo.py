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
    timings = json.loads(open(index.replace("index.html", "metrics.json"), encoding="utf-8").read())["demo_timings"]
    assert "counterfactual_s" in timings
