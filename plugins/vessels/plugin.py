"""The vessels plugin's hooks: the ``check-topology`` command."""

from __future__ import annotations

from typing import Any

from workbench import hookimpl

PLUGIN_NAME = "vessels"


@hookimpl
def workbench_add_commands(cli: Any) -> None:
    """Add ``workbench check-topology``."""
    from workbench_plugins.vessels.check import check_topology_command

    cli.add_command(check_topology_command)
