"""Fixtures for the whole suite."""

from __future__ import annotations

import pytest

from tests.figures import pytest_configure, show_figure  # noqa: F401 - the figures plugin
from tests.integration.conftest import STARTED


@pytest.fixture(autouse=True)
def _no_server_outlives_its_test():
    """Kill any csnapd a test left running (a failed assertion skips its own stop())."""
    yield
    while STARTED:
        handle = STARTED.pop()
        if handle.proc is not None and handle.proc.poll() is None:
            handle.proc.kill()
            handle.proc.wait()
