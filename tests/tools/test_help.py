"""Every console script answers --version, and every option and argument has help text."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from csnap_client.version import version
from csnapd.config import add_arguments

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def parser_of(script: str) -> argparse.ArgumentParser:
    """The argument parser behind a console script, as its main() builds it."""
    if script == "csnapd":
        from csnapd.options import build_parser
        p = build_parser()
        add_arguments(p)  # --config, --metrics, --log-format come from the config module
        return p
    module = importlib.import_module(SCRIPTS[script].split(":")[0])
    return module.build_parser()


def all_parsers(p: argparse.ArgumentParser, name: str) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(name, p)]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, sp in action.choices.items():
                out += all_parsers(sp, f"{name} {sub}")
    return out


def test_every_script_is_covered_here():
    assert set(SCRIPTS) == {"csnap-init", "csnap-check", "csnap-dump", "csnapd", "csnapctl",
                            "csnap-io", "csnap-nbd", "csnap-bench", "csnap-diff", "csnap-apply",
                            "csnap-send", "csnap-receive"}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_script_answers_version(script):
    r = subprocess.run([str(BIN / script), "--version"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{script} (csnap) {version()}, protocol version "), r.stdout
    assert version() != "unknown"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_option_and_argument_has_help(script):
    for name, p in all_parsers(parser_of(script), script):
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = "/".join(action.option_strings) or action.dest
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{name} {choice.dest}: subcommand without help"
                continue
            assert action.help and action.help.strip(), f"{name} {what}: no help text"


@pytest.mark.parametrize("script", sorted(set(SCRIPTS) - {"csnap-bench"}))
def test_every_help_documents_the_exit_codes(script):
    text = parser_of(script).format_help()
    assert "Exit" in text and " 0 " in text.replace("\n", " "), text


def words(text: str) -> str:
    """Help text with every run of whitespace as one space (line wrapping varies)."""
    return " ".join(text.split())


def test_named_gaps_of_the_issue_have_help():
    check = words(parser_of("csnap-check").format_help())
    assert "--store PATH the snapshot store file or block device to check" in check
    dump = parser_of("csnap-dump").format_help()
    for section in ("superblock", "snapshots", "tree", "journal", "bitmap", "grants"):
        assert f"\n  {section} " in dump, section
    delete = dict(all_parsers(parser_of("csnapctl"), "csnapctl"))["csnapctl delete"]
    assert "NAME|TAG the snapshot's name, or its tag" in words(delete.format_help())


def test_csnap_io_read_says_read():
    r = subprocess.run([str(BIN / "csnap-io"), "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0
    assert "read read LENGTH bytes from OFFSET to stdout" in words(r.stdout)
    assert "write LENGTH" not in r.stdout
