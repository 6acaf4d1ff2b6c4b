"""Imports point down only: the layering of docs/architecture.md, checked on the source."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names)


def imports(path: Path) -> set[str]:
    """Absolute module names imported by ``path`` (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
    return names


RULES = {
    # layer: (allowed third-party or project prefixes besides the stdlib)
    "csnapd/store": ("csnapd.store", "crc32c"),
    "csnapd/engine": ("csnapd.engine", "csnapd.store", "csnap_client.protocol",
                      "sortedcontainers", "crc32c"),
    "csnap_client/protocol": ("csnap_client.protocol", "msgpack"),
    # crc32c: the checksum of device verification samples (csnap_client/devices.py)
    "csnap_client": ("csnap_client", "sortedcontainers", "msgpack", "crc32c"),
}
FORBIDDEN = {
    "csnapd/store": ("asyncio", "socket", "uvloop"),
    "csnapd/engine": ("asyncio", "socket", "uvloop", "csnapd.net"),
    "tools": ("csnapd.engine", "csnapd.net"),
}


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(RULES))
def test_layer_imports_only_what_it_may(folder):
    allowed = RULES[folder]
    for path in files(folder):
        if folder == "csnap_client" and "protocol" in path.parts:
            continue
        for name in imports(path):
            top = name.split(".")[0]
            if top in STDLIB or top == "__future__":
                continue
            assert name.startswith(allowed), f"{path.relative_to(ROOT)} imports {name}"


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layer_never_imports_forbidden(folder):
    for path in files(folder):
        for name in imports(path):
            assert not name.startswith(FORBIDDEN[folder]), \
                f"{path.relative_to(ROOT)} imports {name}"
