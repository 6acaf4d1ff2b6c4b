"""csnapd's TOML configuration file: validation, precedence, and the sample file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from csnapd import config
from csnapd.config import ConfigError, add_arguments, apply_config, config_options, load_config
from csnapd.daemon import build_parser

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "packaging" / "csnapd.toml"
DOC = ROOT / "docs" / "packaging.md"
KEYS = {"store", "origin", "listen", "control", "cache_size", "log_level", "lease", "lock_lease",
        "on_full", "max_inflight", "max_connections", "identify_timeout",
        "frame_timeout", "metrics", "log_format"}


def parser():
    p = build_parser()
    add_arguments(p)
    return p


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "csnapd.toml"
    path.write_text(text)
    return str(path)


def all_keys() -> set[str]:
    return set(config_options(parser()))


def test_every_option_is_a_key():
    assert KEYS <= all_keys()


def test_sample_loads_and_documents_every_key():
    assert load_config(str(SAMPLE)) == {"store": "/dev/vg0/snapstore", "origin": "/dev/vg0/data"}
    text = SAMPLE.read_text()
    for key in all_keys():
        assert re.search(rf"^#?{key} = ", text, re.M), f"{key} missing from {SAMPLE}"


def test_sample_with_every_key_uncommented_is_valid_and_shows_the_defaults(tmp_path):
    text = re.sub(r"^#(\w+ = )", r"\1", SAMPLE.read_text(), flags=re.M)
    values = load_config(write(tmp_path, text))
    assert set(values) == all_keys()
    defaults = vars(parser().parse_args(["--store", "s", "--origin", "o"]))
    for key, value in values.items():
        if defaults[key] is not None and key not in ("store", "origin"):  # examples
            assert value == defaults[key], key


def test_docs_describe_every_key():
    text = DOC.read_text()
    for key in all_keys():
        assert f"`{key}`" in text, f"{key} is not documented in {DOC}"


def test_types_are_checked(tmp_path):
    good = load_config(write(tmp_path, 'lease = 5\nmax_inflight = 8\nlisten = "0.0.0.0:1"\n'))
    assert good == {"lease": 5.0, "max_inflight": 8, "listen": "0.0.0.0:1"}
    assert isinstance(good["lease"], float)


@pytest.mark.parametrize("text, words", [
    ("stroe = 'x'\n", ["unknown key 'stroe'", "known keys", "store"]),
    ("cache-size = '1M'\n", ["unknown key 'cache-size'", "did you mean 'cache_size'"]),
    ("[csnapd]\nstore = 'x'\n", ["unknown key 'csnapd'", "flat"]),
    ("max_inflight = 1.5\n", ["'max_inflight'", "integer"]),
    ("max_inflight = true\n", ["'max_inflight'", "integer"]),
    ("lease = '10'\n", ["'lease'", "number"]),
    ("store = 7\n", ["'store'", "string"]),
    ("log_level = 'loud'\n", ["'log_level'", "debug"]),
    ("on_full = 'panic'\n", ["'on_full'", "squash"]),
    ("log_format = 'xml'\n", ["'log_format'", "json"]),
    ("listen = '4270'\n", ["'listen'", "HOST:PORT"]),
    ("metrics = 'localhost'\n", ["'metrics'", "HOST:PORT"]),
    ("cache_size = 'lots'\n", ["'cache_size'", "not a size"]),
    ("store = \n", ["not valid TOML"]),
])
def test_bad_files_name_the_key(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, parser())
    for word in words:
        assert word in str(err.value)
    assert path in str(err.value)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "nope.toml"))


def test_file_supplies_required_options_and_flags_win(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_CONFIG", str(tmp_path / "absent.toml"))
    path = write(tmp_path, 'store = "/s"\norigin = "/o"\nlease = 3\nlog_format = "json"\n')
    args = apply_config(build_parser(), ["--config", path, "--lease", "7"])
    assert (args.store, args.origin, args.lease, args.log_format) == ("/s", "/o", 7.0, "json")
    assert args.config == path
    assert args.listen == "127.0.0.1:4270" and args.metrics is None  # untouched defaults
    args = apply_config(build_parser(), [f"--config={path}", "--store", "/other"])
    assert (args.store, args.lease) == ("/other", 3.0)


def test_default_file_is_used_only_when_it_exists(tmp_path, monkeypatch):
    default = tmp_path / "csnapd.toml"
    monkeypatch.setattr(config, "DEFAULT_CONFIG", str(default))
    with pytest.raises(SystemExit) as exc:  # no file: --store is still required
        apply_config(build_parser(), [])
    assert exc.value.code == 2
    default.write_text('store = "/s"\norigin = "/o"\n')
    args = apply_config(build_parser(), [])
    assert (args.store, args.config) == ("/s", str(default))
    args = apply_config(build_parser(), ["--config", "", "--store", "a", "--origin", "b"])
    assert (args.store, args.config) == ("a", None)


def test_bad_file_exits_2_with_the_key(tmp_path, capsys):
    path = write(tmp_path, 'store = "/s"\norigin = "/o"\nlock_lease = "long"\n')
    with pytest.raises(SystemExit) as exc:
        apply_config(build_parser(), ["--config", path])
    assert exc.value.code == 2
    assert "'lock_lease'" in capsys.readouterr().err


def test_add_arguments_is_idempotent():
    p = parser()
    add_arguments(p)
    args = p.parse_args(["--store", "s", "--origin", "o", "--metrics", "[::1]:9270",
                         "--log-format", "json"])
    assert (args.metrics, args.log_format, args.config) == ("[::1]:9270", "json", None)
