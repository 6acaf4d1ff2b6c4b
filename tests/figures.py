"""The reliability figures: a summary section at the end of the run, and a results file.

The crash, corruption, kill, fuzz and stall tests measure figures that
docs/reliability.md quotes ("crash states tried: 2,954, failures: 0").  They are
results, not warnings, so a test calls the ``show_figure`` fixture and the figure is
reported twice at the end of the run:

* a "reliability figures" section of the terminal summary, whatever -q or -s say;
* ``test-results/figures.txt`` (git-ignored), one line per figure, for CI to keep.

How the figures reach the end of the run under pytest-xdist (``pytest -n 2``): a
worker's output is never shown, but its test reports travel to the controller, and
``user_properties`` travel with them.  ``show_figure`` records the figure there
(``record_property``); the controller collects it from every report in
``pytest_runtest_logreport`` and writes the section and the file.  The same hooks run
without xdist, where the one process is the controller.  Only the controller writes:
workers have ``config.workerinput``.

This module is a plugin: tests/conftest.py re-exports its fixture and hooks, and the
controller loads tests/conftest.py because pyproject.toml's testpaths point there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

PROPERTY = "reliability_figure"
RESULTS = Path("test-results") / "figures.txt"


@pytest.fixture
def show_figure(record_property: Callable[[str, object], None]) -> Callable[[str], None]:
    """``show_figure(text)``: report ``text`` as one of this test's reliability figures."""
    def show(text: str) -> None:
        record_property(PROPERTY, text)
    return show


def pytest_configure(config: pytest.Config) -> None:
    """In the controller (or the only process), register the collector of figures."""
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(FigureReport(config), "csnap-reliability-figures")


class FigureReport:
    """Collects the figures from every test report; writes the section and the file."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.figures: list[tuple[str, str, str]] = []  # (nodeid, outcome, figure)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Keep the figures of a finished test (a worker's report, under xdist)."""
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name == PROPERTY:
                self.figures.append((report.nodeid, report.outcome, str(value)))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Print the "reliability figures" section and write the results file."""
        if not self.figures:
            return
        lines = [_line(nodeid, outcome, text) for nodeid, outcome, text in sorted(self.figures)]
        terminalreporter.section("reliability figures", sep="=")
        for line in lines:
            terminalreporter.write_line(line)
        root = Path(self.config.rootpath)
        try:
            (root / RESULTS).parent.mkdir(parents=True, exist_ok=True)
            header = (f"# csnap reliability figures, {time.strftime('%Y-%m-%d %H:%M:%S %z')}: "
                      f"{len(lines)} figure(s) of this run (see docs/reliability.md)\n")
            (root / RESULTS).write_text(header + "".join(line + "\n" for line in lines))
        except OSError as exc:
            terminalreporter.write_line(f"(could not write {root / RESULTS}: {exc})")
            return
        terminalreporter.write_line(f"(also written to {RESULTS})")


def _line(nodeid: str, outcome: str, text: str) -> str:
    where = nodeid.split("::", 1)
    test = f"{Path(where[0]).name}::{where[1]}" if len(where) == 2 else nodeid
    mark = "" if outcome == "passed" else f" [{outcome.upper()}]"
    return f"{test}{mark}: {text}"
