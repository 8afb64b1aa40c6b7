"""The small ``workbench demo`` the tests share: a few phantoms and a few training steps per plugin step.

:func:`small_demo_overrides` gives the command-line overrides (every size and budget cut down) and
:func:`run_small_demo` runs the demo through the CLI with them; ``tests/conftest.py`` runs it once per
session for the tests that read its pages (``tests/test_demo.py``, ``tests/test_pages_in_browser.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def small_demo_overrides(output_root: Path, store: Path) -> list[str]:
    """``key=value`` overrides that make ``configs/demo.yaml`` run in well under a minute on one CPU thread.

    Args:
        output_root: where the demo's run folder goes.
        store: the model store the trained encoders go to (kept out of the user's store).

    Returns:
        The overrides, in the order the CLI takes them.
    """
    small = [f"run.output_root={output_root}", "data.cxr_studies=8", "data.fundus_images=2", "run.device=cpu"]
    small += [f"options.contrastive-pretrain.{key}" for key in (
        "data.options.n=64", "model.options.image_size=32", "model.options.context_length=32", "train.steps=3", "train.batch_size=8",
        "train.checkpoint_every=3", f"save.store={store}")]
    small += [f"options.vessels.{key}" for key in (
        "data.patch_size=32", "data.patches_per_image=4", "model.options.channels=[8, 16, 32]", "model.options.strides=[2, 2]",
        "train.steps=3", "train.batch_size=8", "train.checkpoint_every=3", "inference.roi_size=64", f"save.store={store}")]
    small += [f"options.grounding.{key}" for key in ("train.steps=3", "train.batch_size=8", "train.checkpoint_every=3", f"save.store={store}")]
    small += [f"options.reporting.{job}.{key}" for job in ("explainer", "editor") for key in (
        "train.steps=3", "train.batch_size=8", "train.checkpoint_every=3", "generation.max_new_tokens=16")]
    return small


@dataclass(frozen=True)
class SmallDemo:
    """A finished small demo: its ``index.html``, the CLI's exit code and output."""

    index: Path
    exit_code: int
    output: str

    @property
    def folder(self) -> Path:
        """The demo's run folder."""
        return self.index.parent


def run_small_demo(root: Path) -> SmallDemo:
    """Run ``workbench demo --config configs/demo.yaml`` with :func:`small_demo_overrides` under ``root``.

    Args:
        root: an empty folder; the run folder and the model store go inside it.

    Returns:
        The :class:`SmallDemo` (``index`` is the last line the command printed).
    """
    from click.testing import CliRunner

    from workbench.cli import build_cli
    from workbench.host import create_plugin_manager

    host = create_plugin_manager()
    result = CliRunner().invoke(build_cli(host), ["demo", "--config", "configs/demo.yaml", *small_demo_overrides(root, root / "store")],
                                obj=host, catch_exceptions=False)
    lines = result.output.strip().splitlines()
    return SmallDemo(Path(lines[-1]) if lines else root / "index.html", result.exit_code, result.output)
