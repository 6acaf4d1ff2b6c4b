"""The protocol package imports only stdlib + msgpack: no asyncio, no sockets, no csnapd."""

import ast
import subprocess
import sys
from pathlib import Path

import csnap_client.protocol as protocol

PKG = Path(protocol.__file__).parent
FORBIDDEN = {"asyncio", "socket", "csnapd", "uvloop", "selectors", "ssl"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_static_imports():
    for path in PKG.glob("*.py"):
        mods = imported_modules(path)
        assert not mods & FORBIDDEN, (path.name, mods & FORBIDDEN)
        third_party = {m for m in mods if m not in sys.stdlib_module_names}
        assert third_party <= {"msgpack"}, (path.name, third_party)


def test_runtime_imports():
    code = ("import sys, csnap_client.protocol; "
            f"print(sorted(m for m in {sorted(FORBIDDEN)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_all_is_complete():
    for name in protocol.__all__:
        assert hasattr(protocol, name), name
    assert protocol.PROTOCOL_VERSION == 2
