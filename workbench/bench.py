"""``workbench bench NAME``: run one benchmark of ``benchmarks/`` from a clean checkout and write its results JSON.

A benchmark is a script ``benchmarks/NAME.py`` that declares, at module level::

    BENCHMARK = {"name": "NAME", "cpu_budget_minutes": 30, "configs": ["configs/x.yaml"], "measures": "what it measures",
                 "models": ["encoder"]}   # optional: the roles a user may pass instead of training (--model encoder=NAME)

    def run(out_path, tiny=False, *, work_dir, models, store): ...

``run`` trains every model it needs from the committed configs in one go (a model the user names with
``--model ROLE=NAME[:VERSION]`` is used instead), evaluates, and writes ``out_path`` through
:class:`workbench.provenance.Provenance`. ``tiny`` runs a few steps on a handful of phantoms: a smoke test of the
whole path whose figures mean nothing (it writes under ``runs/bench-tiny/`` unless ``--out`` says otherwise).

The declarations are read with :func:`ast.literal_eval`, so ``--list`` imports no benchmark (and no torch).
A script that cannot carry the declaration itself is described in :data:`REGISTERED`.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import inspect
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from workbench.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARK_DIR = REPO_ROOT / "benchmarks"
REQUIRED_KEYS = ("name", "cpu_budget_minutes", "configs", "measures")

# Benchmarks whose script another engineer owns: declared here, run through their ``main(argv)``.
REGISTERED: dict[str, dict[str, Any]] = {
    "pretrain_vs_open_clip": {
        "name": "pretrain_vs_open_clip", "cpu_budget_minutes": 15, "configs": [],
        "measures": "samples/s and MFU of our pretrain against open_clip's trainer on the same model, data and batch",
        "entry": "main",
    },
}


@dataclass
class BenchmarkSpec:
    """One benchmark: its declaration and the script that runs it.

    Attributes:
        name: the benchmark's name (``benchmarks/<name>.py``).
        cpu_budget_minutes: its stated budget, minutes on a 2-core CPU.
        configs: the committed configs it trains and evaluates from.
        measures: what it measures, in one line.
        path: the script.
        entry: ``"run"`` (the runner's contract) or ``"main"`` (a script driven by its own ``main(argv)``).
    """

    name: str
    cpu_budget_minutes: float
    configs: list[str]
    measures: str
    path: Path
    entry: str = "run"
    extra: dict[str, Any] = field(default_factory=dict)


def _declaration(path: Path) -> tuple[dict[str, Any] | None, set[str]]:
    """The module-level ``BENCHMARK`` literal of a script (``None`` when absent) and its top-level function names."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as error:
        raise ConfigError(f"{path}: not valid Python ({error.msg}, line {error.lineno})") from error
    declared, functions = None, {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(target, ast.Name) and target.id == "BENCHMARK" for target in node.targets):
            try:
                declared = ast.literal_eval(node.value)
            except ValueError as error:
                raise ConfigError(f"{path}: BENCHMARK must be a literal dict, its values written out (no names): {error}") from error
    return declared, functions


def discover(folder: Path = BENCHMARK_DIR) -> dict[str, BenchmarkSpec]:
    """Every benchmark in ``folder``, by name (sorted).

    Raises:
        ConfigError: a declaration lacks a key, names another file, or its script has no ``run`` function.
    """
    found: dict[str, BenchmarkSpec] = {}
    for path in sorted(folder.glob("*.py")):
        declared, functions = _declaration(path)
        entry = "run"
        if declared is None and path.stem in REGISTERED:
            declared = dict(REGISTERED[path.stem])
            entry = declared.pop("entry")
        if declared is None:
            continue
        missing = [key for key in REQUIRED_KEYS if key not in declared]
        if missing:
            raise ConfigError(f"{path}: BENCHMARK lacks {', '.join(missing)}")
        if declared["name"] != path.stem:
            raise ConfigError(f"{path}: BENCHMARK name {declared['name']!r} differs from the file name {path.stem!r}")
        if entry not in functions:
            raise ConfigError(f"{path}: a benchmark needs a top-level {entry}() function")
        extra = {key: value for key, value in declared.items() if key not in REQUIRED_KEYS}
        found[path.stem] = BenchmarkSpec(path.stem, float(declared["cpu_budget_minutes"]), list(declared["configs"]), str(declared["measures"]),
                                         path, entry, extra)
    return found


def load_entry(spec: BenchmarkSpec) -> Callable[..., Any]:
    """Import the benchmark's script (with ``benchmarks/`` importable, as when run as a script) and return its entry."""
    if str(spec.path.parent) not in sys.path:
        sys.path.insert(0, str(spec.path.parent))
    module_spec = importlib.util.spec_from_file_location(f"workbench_benchmark_{spec.name}", spec.path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, spec.entry)


def parse_models(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``ROLE=NAME[:VERSION]`` strings -> ``{role: reference}``.

    Raises:
        ConfigError: a pair without ``=``.
    """
    models = {}
    for pair in pairs:
        role, separator, reference = pair.partition("=")
        if not separator or not role or not reference:
            raise ConfigError(f"--model {pair!r}: expected ROLE=NAME[:VERSION], e.g. encoder=contrastive-phantom:v3")
        models[role.strip()] = reference.strip()
    return models


def run_benchmark(name: str, *, tiny: bool = False, out: Path | None = None, work_dir: Path | None = None,
                  models: dict[str, str] | None = None, store: Path | None = None, resume: bool = False) -> Path:
    """Run one benchmark from the repository root and return the results JSON it wrote.

    Args:
        name: the benchmark (``workbench bench --list``).
        tiny: the smoke-sized run.
        out: the results JSON (default ``benchmarks/results/NAME.json``; tiny: ``runs/bench-tiny/NAME/NAME.json``).
        work_dir: run folders, phantoms and the fresh model store (default ``runs/bench/NAME``, tiny ``runs/bench-tiny/NAME``).
        models: ``{role: reference}`` stored models to use instead of training them (then ``store`` is where they are).
        store: the model store holding ``models`` (default: a fresh one under ``work_dir``).
        resume: continue the benchmark's interrupted run (its newest run folder of each training stage, from the last
            checkpoint) instead of starting afresh; only benchmarks whose ``run`` takes ``resume`` can.

    Raises:
        ConfigError: an unknown benchmark, models named without a store, or ``resume`` for a benchmark that cannot.
    """
    benchmarks = discover()
    if name not in benchmarks:
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(benchmarks)}")
    if models and store is None:
        raise ConfigError("--model names a stored model: say which store holds it with --store")
    spec = benchmarks[name]
    unknown = sorted(set(models or {}) - set(spec.extra.get("models", [])))
    if unknown:
        raise ConfigError(f"{name} trains no model called {', '.join(unknown)}; it takes {spec.extra.get('models') or 'none'}")
    work_dir = Path(work_dir or REPO_ROOT / "runs" / ("bench-tiny" if tiny else "bench") / name).resolve()
    out = Path(out or (work_dir / f"{name}.json" if tiny else BENCHMARK_DIR / "results" / f"{name}.json")).resolve()
    entry = load_entry(spec)
    resumable = spec.entry == "run" and "resume" in inspect.signature(entry).parameters
    if resume and not resumable:
        raise ConfigError(f"{name} cannot resume (its run takes no resume); run it again from the start")
    with contextlib.chdir(REPO_ROOT):  # the configs' relative paths (runs/..., configs/...) mean the repository's
        if spec.entry == "main":
            entry(["--tiny"] if tiny else [])
            return REPO_ROOT / "benchmarks" / "results" / f"{name}.json"
        # A fresh store per run: a benchmark never picks up a model some earlier run left behind.
        fresh_store = store or work_dir / "stores" / time.strftime("%Y%m%d-%H%M%S")
        entry(out, tiny=tiny, work_dir=work_dir, models=dict(models or {}), store=Path(fresh_store).resolve(),
              **({"resume": True} if resume else {}))
    return out


@click.command("bench")
@click.argument("name", required=False)
@click.option("--list", "list_only", is_flag=True, help="list the benchmarks with their CPU budgets and what each measures")
@click.option("--tiny", is_flag=True, help="a few steps on a handful of phantoms: checks the whole path, its figures mean nothing")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="results JSON (default benchmarks/results/NAME.json)")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None, help="run folders and data (default runs/bench/NAME)")
@click.option("--model", "model_pairs", multiple=True, metavar="ROLE=NAME[:VERSION]", help="use this stored model instead of training it")
@click.option("--store", type=click.Path(path_type=Path), default=None, help="the model store holding --model's models")
@click.option("--resume", is_flag=True, help="continue an interrupted run of NAME from its stages' last checkpoints (benchmarks that can)")
def bench_command(name: str | None, list_only: bool, tiny: bool, out: Path | None, work_dir: Path | None, model_pairs: tuple[str, ...],
                  store: Path | None, resume: bool) -> None:
    """Run benchmark NAME from the committed configs and write its results JSON with provenance."""
    benchmarks = discover()
    if list_only or name is None:
        width = max(len(spec_name) for spec_name in benchmarks)
        click.echo(f"{'benchmark':<{width}}  {'CPU min':>7}  measures (CPU minutes on a 2-core CPU)")
        for spec in benchmarks.values():
            click.echo(f"{spec.name:<{width}}  {spec.cpu_budget_minutes:>7g}  {spec.measures}")
        return
    written = run_benchmark(name, tiny=tiny, out=out, work_dir=work_dir, models=parse_models(model_pairs), store=store, resume=resume)
    click.echo(str(written))
