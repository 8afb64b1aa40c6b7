"""The command every training job gets: ``NAME --config FILE [--resume RUN] [key.sub=value ...]``.

Each plugin's training command loaded its settings, ran its job with the host's
dataset builders and printed the run's ``index.html``; :func:`training_command`
is that command once. The job and its settings class are named as
``"module:attribute"`` and imported when the command runs, so building the CLI
imports no job (``workbench --help`` stays fast).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import click

from workbench.config import load_settings, resumable_config_options
from workbench.host import Host, pass_host


def import_attribute(target: str) -> Any:
    """The object ``"package.module:attribute"`` names."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def training_command(name: str, job: str, settings: str, help: str) -> click.Command:
    """A click command that runs one training job from a config and prints the run's ``index.html``.

    Args:
        name: the command's name (``train``, ``pretrain``).
        job: ``"module:function"``; called as ``fn(settings, builders, resume=RUN or None)``, it returns
            a :class:`~workbench.jobs.TrainOutcome`.
        settings: ``"module:SettingsClass"`` the config is validated against.
        help: the command's one-line help.

    Returns:
        The command, taking ``--config FILE``, ``--resume RUN_DIR`` (its saved config when ``--config`` is
        not given) and trailing ``key.sub=value`` overrides.
    """

    @click.command(name, help=help)
    @resumable_config_options
    @pass_host
    def run_job(host: Host, config: Path | None, overrides: tuple[str, ...], resume: Path | None) -> None:
        job_settings = load_settings(import_attribute(settings), config, overrides)
        outcome = import_attribute(job)(job_settings, host.datasets.builders, resume=resume)
        click.echo(str((outcome.run.path / "index.html").resolve()))

    return run_job
