"""The plugin host: entry points loaded one by one, failures isolated, names owned by plugins."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from workbench import hookimpl, hookspecs
from workbench.cli import _pop_disabled_plugins, build_cli
from workbench.host import create_plugin_manager, failed_plugins

REPO = Path(__file__).resolve().parents[1]

PLUGIN_SOURCES = {
    "wb_good_plugin": '''
        import click
        import torch
        from workbench import hookimpl

        @hookimpl
        def workbench_register_models(registry):
            registry.register("tiny-linear-test", lambda in_features=4, out_features=2: torch.nn.Linear(in_features, out_features), task="test")

        @hookimpl
        def workbench_register_metrics(metrics):
            metrics.add("mean-abs-test", lambda: (lambda a, b: float((a - b).abs().mean())))

        @hookimpl
        def workbench_add_commands(cli):
            @cli.command("hello-test")
            def hello():
                """Say hello."""
                click.echo("hello from the good plugin")
    ''',
    "wb_broken_plugin": '''
        raise ImportError("No module named 'a_dependency_nobody_installed'")
    ''',
    "wb_raising_plugin": '''
        from workbench import hookimpl

        @hookimpl
        def workbench_register_datasets(catalog):
            raise RuntimeError("boom while registering datasets")
    ''',
    "wb_misspelt_plugin": '''
        from workbench import hookimpl

        @hookimpl
        def workbench_register_modles(registry):
            pass
    ''',
    "wb_duplicate_plugin": '''
        import click
        from workbench import hookimpl

        @hookimpl
        def workbench_add_commands(cli):
            @cli.command("hello-test")
            def hello_again():
                """Say hello twice."""
    ''',
}

ENTRY_POINTS = {
    "good": "wb_good_plugin",
    "broken": "wb_broken_plugin",
    "raising": "wb_raising_plugin",
    "misspelt": "wb_misspelt_plugin",
    "zz-duplicate": "wb_duplicate_plugin",
}


@pytest.fixture()
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path holding five plugin modules and one distribution declaring them."""
    site = tmp_path / "site"
    site.mkdir()
    for module, source in PLUGIN_SOURCES.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = site / "wb_test_plugins-0.3.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: wb-test-plugins\nVersion: 0.3\n")
    lines = "\n".join(f"{name} = {module}" for name, module in ENTRY_POINTS.items())
    (dist_info / "entry_points.txt").write_text(f"[workbench.plugins]\n{lines}\n")
    monkeypatch.syspath_prepend(str(site))
    for module in PLUGIN_SOURCES:
        sys.modules.pop(module, None)
    monkeypatch.delenv("WORKBENCH_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    return site


def test_broken_plugins_are_reported_and_skipped(plugin_site: Path):
    host = create_plugin_manager()
    plugins = {info["name"]: info for info in host.plugin_report()}
    assert plugins["builtin"]["source"] == "built-in" and plugins["builtin"]["error"] is None
    assert plugins["good"]["error"] is None
    assert plugins["good"]["version"] == "0.3" and plugins["good"]["source"] == "distribution wb-test-plugins"
    assert plugins["good"]["hooks"] == ["workbench_add_commands", "workbench_register_metrics", "workbench_register_models"]
    assert "a_dependency_nobody_installed" in plugins["broken"]["error"]
    assert "boom while registering datasets" in plugins["raising"]["error"]
    assert "workbench_register_modles" in plugins["misspelt"]["error"]
    assert {info.name for info in failed_plugins(host)} == {"broken", "raising", "misspelt"}
    # the host and the good plugin keep working
    model = host.models.create_model("tiny-linear-test", in_features=3)
    assert model.in_features == 3 and host.models.entry("tiny-linear-test").plugin == "good"
    assert host.metrics.entry("mean-abs-test").plugin == "good"
    assert "phantom-cxr" in host.datasets.builders.names()


def test_duplicate_command_names_both_plugins(plugin_site: Path):
    host = create_plugin_manager()
    cli = build_cli(host)
    duplicate = host.plugins["zz-duplicate"]
    assert "'hello-test'" in duplicate.error and "'good'" in duplicate.error and "'zz-duplicate'" in duplicate.error
    result = CliRunner().invoke(cli, ["hello-test"], obj=host)
    assert result.exit_code == 0 and "hello from the good plugin" in result.output
    assert host.commands.entry("hello-test").plugin == "good"
    assert host.commands.entry("phantoms").plugin == "builtin"


def test_plugins_json_lists_errors(plugin_site: Path):
    host = create_plugin_manager()
    result = CliRunner().invoke(build_cli(host), ["plugins", "--json"], obj=host)
    assert result.exit_code == 0, result.output
    listed = {info["name"]: info for info in json.loads(result.output)}
    assert set(ENTRY_POINTS) | {"builtin"} <= set(listed)
    assert listed["broken"]["error"].startswith("failed to load: ImportError")


def test_autoload_switch_and_blocking(plugin_site: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert set(create_plugin_manager().plugins) == {"builtin"}
    monkeypatch.delenv("WORKBENCH_DISABLE_PLUGIN_AUTOLOAD")
    host = create_plugin_manager(disabled=["broken", "good"])
    assert "broken" not in host.plugins and "good" not in host.plugins and "raising" in host.plugins
    monkeypatch.setenv("WORKBENCH_DISABLE_PLUGINS", "raising")
    assert "raising" not in create_plugin_manager().plugins


def test_disable_plugin_flag_is_read_before_the_cli_is_built():
    remaining, disabled = _pop_disabled_plugins(["--disable-plugin", "a", "plugins", "--disable-plugin=b", "--json"])
    assert remaining == ["plugins", "--json"] and disabled == ["a", "b"]


def test_console_script_survives_broken_plugin(plugin_site: Path):
    """The real command in a fresh process, with the broken distribution on its path."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_site), str(REPO)]))
    environment.pop("WORKBENCH_DISABLE_PLUGIN_AUTOLOAD", None)
    completed = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "--disable-plugin", "misspelt", "plugins", "--json"],
        capture_output=True, text=True, env=environment, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    listed = {info["name"]: info for info in json.loads(completed.stdout)}
    assert listed["good"]["error"] is None and listed["broken"]["error"] is not None
    assert "misspelt" not in listed


def test_every_hook_is_documented_with_its_exact_signature():
    guide = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    specs = [name for name in dir(hookspecs) if name.startswith("workbench_")]
    assert len(specs) >= 5
    for name in specs:
        function = getattr(hookspecs, name)
        assert function.__doc__ and "Args:" in function.__doc__ and "Returns:" in function.__doc__
        parameters = ", ".join(inspect.signature(function).parameters)
        assert f"{name}({parameters})" in guide, f"docs/plugins.md does not document {name}({parameters})"


def test_trace_switch_traces_every_hook_call(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    calls = []

    class Recorder:
        @hookimpl
        def workbench_register_metrics(self, metrics):
            calls.append(metrics.plugin)
            metrics.add("trace-test-metric", lambda: (lambda a, b: 0.0))

    monkeypatch.setenv("WORKBENCH_TRACE_HOOKS", "1")
    host = create_plugin_manager(autoload=False, extra_plugins=[("recorder", Recorder())])
    trace = capsys.readouterr().err
    assert calls == ["recorder"] and host.metrics.entry("trace-test-metric").plugin == "recorder"
    for hook in ("workbench_register_datasets", "workbench_register_metrics"):  # the hooks these two plugins implement
        assert f"{hook} [hook]" in trace and f"finish {hook}" in trace
    monkeypatch.delenv("WORKBENCH_TRACE_HOOKS")
    create_plugin_manager(autoload=False, extra_plugins=[("recorder", Recorder())])
    assert "[hook]" not in capsys.readouterr().err


def test_metrics_command_lists_the_catalog_with_plugins_and_kinds():
    host = create_plugin_manager()
    result = CliRunner().invoke(build_cli(host), ["metrics", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["grounding-scores"] == {"name": "grounding-scores", "plugin": "grounding", "kind": "cumulative",
                                        "description": "CNR, pointing, mIoU sweep, box acc@0.5 per category"}
    assert rows["mask-iou"]["kind"] == "function" and rows["report-bleu4"]["plugin"] == "reporting"
    assert set(rows) == set(host.metrics.names())
    only = json.loads(CliRunner().invoke(build_cli(host), ["metrics", "report-*", "--json"]).output)
    assert [row["name"] for row in only] == ["report-bleu4", "report-edit-score", "report-rouge-l"]


def test_the_cxr_phantom_builder_writes_the_formats_asked_and_rewrites_when_they_change(tmp_path):
    from workbench.builtin import build_cxr_phantoms

    png_only = build_cxr_phantoms(tmp_path / "cxr", n=3, size=128, formats=["png"])
    assert all(record["image"].endswith(".png") and Path(record["image"]).is_file() for record in png_only)
    assert not (tmp_path / "cxr" / "dicom").exists()
    both = build_cxr_phantoms(tmp_path / "cxr", n=3, size=128)  # the default asks for DICOM too: written again
    assert all(record["image"].endswith(".dcm") and Path(record["image"]).is_file() for record in both)
    assert [record["report"] for record in both] == [record["report"] for record in png_only]
