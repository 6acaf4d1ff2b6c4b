"""Print the crash-consistency figures at the end of the pytest run.

Tests call ``show_figure``: it records the figure with ``record_property``
(the property travels with the test report, also from pytest-xdist workers)
and the hook below prints every recorded figure in a "crash-consistency
figures" section of the terminal summary, whatever -s or -q say.

Under xdist with the whole suite (``pytest -n 2`` from the root, as CI runs
it) the controller never loads this conftest, so the hook cannot run there;
a worker then also issues the figure as a UserWarning (a builtin category:
xdist must be able to rebuild it in the controller), which xdist forwards to
the warnings summary of the CI log.
"""

from __future__ import annotations

import os
import warnings

import pytest


@pytest.fixture
def show_figure(record_property, capsys):
    def show(text: str) -> None:
        record_property("figure", text)
        with capsys.disabled():
            print(f"\n{text}")
        if os.environ.get("PYTEST_XDIST_WORKER"):
            warnings.warn(f"reliability figure: {text}", UserWarning, stacklevel=2)
    return show


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    figures = []
    for key in ("passed", "failed"):
        for report in terminalreporter.stats.get(key, []):
            if getattr(report, "when", "call") != "call":
                continue
            for name, value in getattr(report, "user_properties", []):
                if name == "figure":
                    figures.append(f"{report.nodeid.split('::')[-1]}: {value}")
    if figures:
        terminalreporter.section("crash-consistency figures")
        for line in figures:
            terminalreporter.write_line(line)
