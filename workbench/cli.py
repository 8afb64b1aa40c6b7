"""The ``workbench`` command: core commands plus whatever the plugins add.

Core: ``plugins``, ``models list|show|rm|verify|gc``, ``runs clean``, ``demo``. The built-in plugin adds
``phantoms``; first-party and third-party plugins add their jobs through the
``workbench_add_commands`` hook. A :class:`~workbench.errors.WorkbenchError`
is printed as one clear message (no traceback) and exits with status 2;
batch commands exit 3 when some inputs failed and 4 when all did (``workbench.errors``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from workbench import __version__
from workbench.config import config_options, load_settings
from workbench.bench import bench_command
from workbench.datasets_cli import datasets_group
from workbench.errors import EXIT_ERROR, EXIT_OK, WorkbenchError
from workbench.host import Host, pass_host
from workbench.housekeeping import models_gc, runs_group

console = Console(stderr=True)


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@pass_host
def plugins_command(host: Host, as_json: bool) -> None:
    """List loaded plugins: name, version, source, hooks, load errors."""
    report = host.plugin_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    table = Table(title="workbench plugins")
    for column in ("name", "version", "source", "hooks", "status"):
        table.add_column(column)
    for info in report:
        hooks = ", ".join(hook.removeprefix("workbench_") for hook in info["hooks"])
        status = "[green]ok[/green]" if info["error"] is None else f"[red]failed[/red]: {info['error']}"
        table.add_row(info["name"], info["version"], info["source"], hooks, status)
    Console().print(table)


@click.group("models")
def models_group() -> None:
    """The model registry: factories and stored versions."""


@models_group.command("list")
@click.argument("pattern", default="*")
@click.option("--task", default=None, help="only models of this task")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_host
def models_list(host: Host, pattern: str, task: str | None, as_json: bool) -> None:
    """List registered model factories and stored versions matching PATTERN."""
    from workbench.registry import ModelStore

    registry = host.models
    factories = [
        {"name": name, "task": registry.entry(name).task, "plugin": registry.entry(name).plugin}
        for name in registry.list_models(pattern, task=task)
    ]
    import fnmatch

    stored = [
        {"name": record.name, "version": record.version, "task": record.task, "aliases": ",".join(record.aliases),
         "created": record.created, "metrics": json.dumps(record.metrics, sort_keys=True)}
        for record in ModelStore().list()
        if fnmatch.fnmatch(record.name, pattern) and (task is None or record.task == task)
    ]
    if as_json:
        click.echo(json.dumps({"factories": factories, "stored": stored}, indent=2))
        return
    for title, rows in (("model factories", factories), ("stored versions", stored)):
        table = Table(title=title)
        for column in (rows[0].keys() if rows else ["(none)"]):
            table.add_column(column)
        for row in rows:
            table.add_row(*[str(value) for value in row.values()])
        Console().print(table)


@models_group.command("show")
@click.argument("reference")
def models_show(reference: str) -> None:
    """Show one stored version's record (REFERENCE is NAME or NAME:VERSION or NAME:ALIAS)."""
    from workbench.registry import ModelStore, describe_record, parse_ref

    name, version = parse_ref(reference)
    click.echo(json.dumps(describe_record(ModelStore().resolve(name, version)), indent=2, default=str))


@models_group.command("rm")
@click.argument("reference")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def models_rm(reference: str, yes: bool) -> None:
    """Remove a stored version (NAME:VERSION) or every version of NAME."""
    from workbench.registry import ModelStore, parse_ref

    name, version = parse_ref(reference) if ":" in reference else (reference, None)
    what = f"{name} version {version}" if version is not None else f"every version of {name}"
    if not yes:
        click.confirm(f"Remove {what}?", abort=True)
    ModelStore().remove(name, version)
    click.echo(f"removed {what}")


@models_group.command("verify")
@click.option("--fix", is_flag=True, help="remove orphans and broken versions, rewrite stale records (default: only report)")
def models_verify(fix: bool) -> None:
    """Check every stored file against its sha256 and list orphans; exits 1 when something is wrong (dry run)."""
    from workbench.registry import ModelStore

    store = ModelStore()
    issues = store.fix() if fix else store.check()
    for issue in issues:
        click.echo(f"{'fixed ' if fix else ''}{issue.kind}: {issue.message}")
    remaining = store.check() if fix else issues
    if fix:
        click.echo(f"{store.root}: {len(issues)} problem(s) fixed, {len(remaining)} remaining")
    else:
        click.echo(f"{store.root}: {len(issues)} problem(s)" + ("; `workbench models verify --fix` repairs them" if issues else ""))
    if remaining:
        sys.exit(1)


models_group.add_command(models_gc)


@click.command("metrics")
@click.argument("pattern", default="*")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_host
def metrics_command(host: Host, pattern: str, as_json: bool) -> None:
    """List the named metrics the plugins registered (name, plugin, kind, what it measures) matching PATTERN."""
    rows = []
    for name in host.metrics.names(pattern):
        entry = host.metrics.entry(name)
        rows.append({"name": name, "plugin": entry.plugin, "kind": metric_kind(entry.item), "description": entry.description})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="workbench metrics")
    for column in ("name", "plugin", "kind", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    Console().print(table)


def metric_kind(factory: Any) -> str:
    """``cumulative`` for a MONAI-style metric class (call per batch, ``aggregate()``, ``reset()``), else ``function``."""
    return "cumulative" if isinstance(factory, type) and callable(getattr(factory, "aggregate", None)) else "function"


@click.command("demo")
@config_options
@pass_host
def demo_command(host: Host, config: Path | None, overrides: tuple[str, ...]) -> None:
    """Run the end-to-end demo on the embedded phantom data; prints the index.html path."""
    from workbench.demo import DemoSettings, run_demo

    settings = load_settings(DemoSettings, config, overrides)
    index = run_demo(host, settings)
    click.echo(str(index.resolve()))


def _pop_disabled_plugins(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take ``--disable-plugin NAME`` / ``--disable-plugin=NAME`` out of ``argv``.

    They are read before the CLI is built because they decide which plugins
    get to add commands to it.
    """
    remaining, disabled = [], []
    iterator = iter(argv)
    for argument in iterator:
        if argument == "--disable-plugin":
            disabled.append(next(iterator, ""))
        elif argument.startswith("--disable-plugin="):
            disabled.append(argument.split("=", 1)[1])
        else:
            remaining.append(argument)
    return remaining, [name for name in disabled if name]


def build_cli(host: Any) -> click.Group:
    """Build the root click group for ``host``: core commands, then the plugins' commands."""

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="workbench")
    @click.option("--disable-plugin", multiple=True, metavar="NAME", help="do not load plugin NAME (repeatable)")
    @click.option("-v", "--verbose", is_flag=True, help="debug logging")
    @click.pass_context
    def root(context: click.Context, disable_plugin: tuple[str, ...], verbose: bool) -> None:
        """medvl-workbench: contrastive pretraining, vessel topology, counterfactuals and grounding on one host."""
        logging.getLogger("workbench").setLevel(logging.DEBUG if verbose else logging.INFO)
        context.obj = host

    for command in (plugins_command, models_group, metrics_command, demo_command):
        root.add_command(command)
    root.add_command(datasets_group)
    root.add_command(bench_command)
    root.add_command(runs_group)
    host.add_commands(root)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``workbench`` console script."""
    from workbench.host import create_plugin_manager

    arguments, disabled = _pop_disabled_plugins(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    try:
        host = create_plugin_manager(disabled=disabled)
        cli = build_cli(host)
        status = cli.main(args=arguments, prog_name="workbench", standalone_mode=False, obj=host)
    except WorkbenchError as error:
        console.print(f"error: {error}", style="bold red", highlight=False, markup=False)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt as stop:
        console.print(str(stop) or "interrupted", highlight=False, markup=False)
        sys.exit(130)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(1)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Exit as exit_request:
        sys.exit(exit_request.exit_code)
    # Without standalone mode click returns a command's ``ctx.exit(code)`` instead of exiting:
    # a batch command's status (workbench.errors.batch_exit_status) would otherwise be lost.
    if type(status) is int and status != EXIT_OK:
        sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    main()
