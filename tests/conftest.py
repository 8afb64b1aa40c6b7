"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest

from tests.helpers.small_demo import SmallDemo, run_small_demo


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> SmallDemo:
    """The small demo (:mod:`tests.helpers.small_demo`), run once per session for the tests that read its pages."""
    return run_small_demo(tmp_path_factory.mktemp("small-demo"))
