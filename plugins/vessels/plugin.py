"""The vessels plugin's hooks: segmentation networks, fundus datasets, ``vessels``/``check-topology``/``export-bundle`` commands, a demo step."""

from __future__ import annotations

from typing import Any

from workbench import hookimpl
from workbench_plugins.vessels.commands import vessels_group
from workbench_plugins.vessels.demo import demo_vessels

PLUGIN_NAME = "vessels"


@hookimpl
def workbench_register_models(registry: Any) -> None:
    """Register ``vessel-unet``, ``vessel-dynunet`` and ``vessel-attention-unet`` (MONAI networks, optional graph head)."""
    from workbench_plugins.vessels.models import register_vessel_models

    register_vessel_models(registry)


@hookimpl
def workbench_register_datasets(catalog: Any) -> None:
    """Register the DRIVE, CHASE_DB1, STARE, HRF and phantom-fundus builders."""
    from workbench_plugins.vessels.builders import register_vessel_datasets

    register_vessel_datasets(catalog)


@hookimpl
def workbench_add_commands(cli: Any) -> None:
    """Add ``workbench vessels``, ``workbench check-topology`` and ``workbench export-bundle``."""
    from workbench_plugins.vessels.bundle import export_bundle_command
    from workbench_plugins.vessels.check import check_topology_command

    cli.add_command(vessels_group)
    cli.add_command(check_topology_command)
    cli.add_command(export_bundle_command)


@hookimpl
def workbench_demo_steps(steps: Any) -> None:
    """Add the ``vessels`` demo step."""
    steps.add("vessels", demo_vessels)
