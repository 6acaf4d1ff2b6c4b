"""csnapd's configuration file: TOML, read with tomllib; command-line flags override it.

The file is flat: one key per ``csnapd`` option, spelled like the option's
destination (``--cache-size`` is ``cache_size``).  Values keep TOML's types:
numbers for ``lease``/``max_inflight``/..., strings for paths and sizes.  Every
key is checked against the argument parser, so the file cannot drift from the
flags: an unknown key or a wrongly typed value is an error that names the key.

``apply_config(parser, argv)`` is how the daemon parses its command line:

1. ``--config PATH`` is picked out of ``argv`` first (default
   ``/etc/csnap/csnapd.toml`` when that file exists; ``--config ''`` reads none);
2. the file's values become the parser's defaults (so an option that is
   required on the command line, like ``--store``, may come from the file);
3. ``argv`` is parsed as usual, and every flag given wins over the file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Sequence
from typing import Any

from csnap_client.units import parse_size
from csnapd.options import build_parser

DEFAULT_CONFIG = "/etc/csnap/csnapd.toml"
LOG_FORMATS = ("kv", "json")
_NOT_KEYS = {"help", "config"}


class ConfigError(ValueError):
    """The configuration file cannot be used; the message names the file and the key."""


def _host_port(text: str) -> None:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"wants HOST:PORT, not {text!r}")


# Checks beyond the option's type, run on file values so the error names the key.
_VALUE_CHECKS: dict[str, Any] = {"listen": _host_port, "metrics": _host_port, "advertise": _host_port,
                                 "cache_size": parse_size}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--metrics`` and ``--log-format`` (those not there already)."""
    have = {opt for action in parser._actions for opt in action.option_strings}
    if "--config" not in have:
        parser.add_argument("--config", metavar="PATH", default=None,
                            help=f"TOML configuration file; flags override it (default "
                                 f"{DEFAULT_CONFIG} if it exists; '' reads none)")
    if "--metrics" not in have:
        parser.add_argument("--metrics", metavar="HOST:PORT", default=None,
                            help="serve Prometheus metrics over HTTP at this address "
                                 "(default: off; the usual port is 9270)")
    if "--log-format" not in have:
        parser.add_argument("--log-format", choices=list(LOG_FORMATS), default="kv",
                            help="kv: key=value fields (default); json: one JSON object "
                                 "per line")


def config_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The keys a configuration file may hold, each with the parser action it sets."""
    return {a.dest: a for a in parser._actions
            if a.option_strings and a.dest not in _NOT_KEYS
            and not isinstance(a, argparse._HelpAction | argparse._VersionAction)}


def _type_name(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return "boolean"
    if action.type is int:
        return "integer"
    if action.type is float:
        return "number"
    return "string"


def _check_value(path: str, key: str, value: Any, action: argparse.Action) -> Any:
    """The value as the parser would have produced it, or ConfigError naming ``key``."""
    want = _type_name(action)
    if want == "boolean":
        ok = isinstance(value, bool)
    elif want == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
        if ok and action.type is not None:
            try:
                value = action.type(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{path}: key {key!r}: {exc}") from None
    if not ok:
        article = "an" if want[0] in "aeiou" else "a"
        raise ConfigError(f"{path}: key {key!r} must be {article} {want}, not "
                          f"{type(value).__name__} {value!r}")
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{path}: key {key!r} must be one of "
                          f"{', '.join(map(str, action.choices))}, not {value!r}")
    check = _VALUE_CHECKS.get(key)
    if check is not None and isinstance(value, str):
        try:
            check(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: key {key!r}: {exc}") from None
    return value


def load_config(path: str, parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """Read and validate the TOML file at ``path``; return ``{dest: value}``.

    ``parser`` defaults to csnapd's own (with ``--config``, ``--metrics`` and
    ``--log-format`` added when the daemon does not have them yet).  Raises
    ConfigError for an unreadable file, bad TOML, an unknown key, a value of
    the wrong type or outside the option's choices.
    """
    if parser is None:
        parser = build_parser()
        add_arguments(parser)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror or exc}") \
            from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    options = config_options(parser)
    out: dict[str, Any] = {}
    for key, value in data.items():
        action = options.get(key)
        if action is None:
            hint = ""
            if key.replace("-", "_") in options:
                hint = f" (did you mean {key.replace('-', '_')!r}?)"
            elif isinstance(value, dict):
                hint = " (the file is flat: no [tables])"
            raise ConfigError(f"{path}: unknown key {key!r}{hint}; known keys: "
                              f"{', '.join(sorted(options))}")
        out[key] = _check_value(path, key, value, action)
    return out


def config_path(argv: Sequence[str]) -> str | None:
    """The configuration file ``argv`` asks for, else the default one if it exists."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(list(argv))
    if known.config is not None:
        return known.config or None
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def apply_config(parser: argparse.ArgumentParser,
                 argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``) with the config file's values as defaults.

    Adds ``--config``/``--metrics``/``--log-format`` to ``parser`` if missing.
    A bad file ends the program through ``parser.error`` (exit status 2) with a
    message naming the file and key.  ``args.config`` is the file that was read
    (or None).
    """
    add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    path = config_path(argv)
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = load_config(path, parser)
        except ConfigError as exc:
            parser.error(str(exc))
    options = config_options(parser)
    for key, value in values.items():
        action = options[key]
        action.default = value
        action.required = False  # given by the file; a flag still overrides it
    args = parser.parse_args(argv)
    args.config = path
    return args


__all__ = ["DEFAULT_CONFIG", "ConfigError", "add_arguments", "apply_config", "config_options",
           "config_path", "load_config"]
