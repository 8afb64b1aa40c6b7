"""``workbench datasets`` and ``workbench datasets inspect`` on tiny layouts written here."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.contrastive.test_covid_builder import _row, _write_set
from tests.grounding.test_tbx11k_builder import _write_tree
from workbench.cli import build_cli
from workbench.errors import ConfigError
from workbench.host import create_plugin_manager


@pytest.fixture(scope="module")
def cli():
    host = create_plugin_manager()
    return build_cli(host), host


def _invoke(cli, arguments: list[str]):
    command, host = cli
    return CliRunner().invoke(command, arguments, obj=host)


def test_datasets_lists_every_builder_with_its_plugin_and_layout(cli):
    result = _invoke(cli, ["datasets"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1] for line in result.output.strip().splitlines()}
    assert {"covid-chestxray": "contrastive", "tbx11k": "grounding", "class-folders": "counterfactual", "chase-db1": "vessels",
            "phantom-cxr": "builtin"}.items() <= rows.items()
    assert len(rows) == len(cli[1].datasets.builders)
    assert "metadata.csv + images/" in next(line for line in result.output.splitlines() if line.startswith("covid-chestxray"))
    listed = json.loads(_invoke(cli, ["datasets", "--json"]).output)
    assert {"name": "tbx11k", "plugin": "grounding"}.items() <= next(row for row in listed if row["name"] == "tbx11k").items()


def test_inspect_json_gives_one_record_a_line_and_the_skips_on_stderr(cli, tmp_path):
    root = _write_tree(tmp_path / "tbx", {"tb0001": "0 0.25 0.1 0.1 0.1\n9 0.5 0.5 0.1 0.1\n", "tb0002": "2 0.7 0.5 0.2 0.2\n", "tb0003": ""})
    result = _invoke(cli, ["datasets", "inspect", "tbx11k", str(root), "--json", "val_fraction=0", "test_fraction=0"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["id"] for line in lines] == ["tb0001", "tb0002"]
    assert set(lines[0]) == {"id", "split", "image", "boxes"} and lines[0]["split"] == "train"
    assert lines[0]["image"] == str((root / "images" / "train" / "tb0001.png").absolute())
    assert [box["phrase"] for box in lines[0]["boxes"]] == ["active tuberculosis in the right upper zone"]
    assert lines[1]["boxes"][0]["phrase"] == "pulmonary tuberculosis in the left middle zone"
    summary = result.stderr
    assert "tbx11k at" in summary and "2 records" in summary and "train      2" in summary
    assert "skipped: 2" in summary and "line 2: class 9 is out of range" in summary and "empty label file" in summary


def test_inspect_text_dataset_with_options(cli, tmp_path):
    rows = [_row(str(patient), f"{patient}.png", finding="COVID-19" if patient % 2 else "Pneumonia") for patient in range(10)]
    root = _write_set(tmp_path / "covid", rows + [_row("99", "gone.png")], missing=("gone.png",))
    result = _invoke(cli, ["datasets", "inspect", "covid-chestxray", str(root), "seed=1", "report_text=all"])
    assert result.exit_code == 0, result.output
    output = result.stdout
    assert "covid-chestxray at" in output and "10 records" in output
    assert "label counts: 0: 5, 1: 5" in output
    assert "skipped: 1" in output and "p99-gone" in output and "image file missing" in output
    splits = {line.split()[0]: int(line.split()[1]) for line in output.splitlines() if line.startswith("  ") and line.split()[0] in ("train", "val", "test")}
    assert sum(splits.values()) == 10
    records = [json.loads(line) for line in _invoke(cli, ["datasets", "inspect", "covid-chestxray", str(root), "--json"]).stdout.splitlines()]
    assert records[0]["text"].startswith("Chest radiograph showed") and records[0]["label"] == 0


def test_inspect_names_an_unknown_option_and_builder(cli, tmp_path):
    result = _invoke(cli, ["datasets", "inspect", "tbx11k", str(tmp_path), "phrase=with-place"])
    assert isinstance(result.exception, ConfigError)
    assert "takes no option phrase" in str(result.exception) and "phrase_form" in str(result.exception)
    result = _invoke(cli, ["datasets", "inspect", "tbx11", str(tmp_path)])
    assert isinstance(result.exception, ConfigError) and "tbx11k" in str(result.exception)
