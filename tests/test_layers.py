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
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # imports only type checkers see are not dependencies
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
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
    "csnapd/net": ("csnapd.net", "csnapd.engine", "csnapd.metrics", "csnap_client.protocol",
                   "csnapd.store.seal", "csnapd.store.errors"),
    "csnapd/ha": ("csnapd.ha", "csnapd.engine", "csnap_client.protocol"),
    "csnap_client/protocol": ("csnap_client.protocol", "msgpack"),
    "csnap_client": ("csnap_client", "sortedcontainers", "msgpack", "crc32c"),
    "csnap_nbd": ("csnap_nbd", "csnap_client", "uvloop"),
    "csnap_bench": ("csnap_bench", "csnap_client", "csnap_diff", "csnapd.store", "uvloop",
                    "msgpack"),
    "csnap_soak": ("csnap_soak", "csnap_client", "csnapd.store", "hypothesis", "msgpack"),
    "csnap_diff": ("csnap_diff", "csnap_client", "crc32c", "msgpack", "tqdm"),
    "tools": ("tools", "csnap_client", "csnapd.store", "csnapd.explain", "csnap_bench",
              "csnap_diff", "uvloop", "tqdm"),
}
#: The daemon-level modules of csnapd (besides its sub-packages): they wire it all up.
DAEMON = ("csnapd/daemon.py", "csnapd/hanode.py", "csnapd/serving.py", "csnapd/config.py",
          "csnapd/options.py",
          "csnapd/metrics.py",
          "csnapd/logsetup.py", "csnapd/explain.py")
DAEMON_ALLOWED = ("csnapd", "csnap_client.protocol", "csnap_client.units",
                  "csnap_client.version", "prometheus_client", "uvloop")
FORBIDDEN = {
    "csnapd/store": ("asyncio", "socket", "uvloop"),
    "csnapd/engine": ("asyncio", "socket", "uvloop", "csnapd.net"),
    "csnapd/ha": ("csnapd.net", "csnapd.store"),
    "tools": ("csnapd.engine", "csnapd.net"),
    "csnap_nbd": ("csnapd",),
    "csnap_diff": ("csnapd",),
    "csnap_soak": ("csnapd.engine", "csnapd.net"),
    "csnap_bench": ("csnapd.engine", "csnapd.net"),
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


@pytest.mark.parametrize("module", DAEMON)
def test_daemon_modules_import_only_what_they_may(module):
    for name in imports(ROOT / module):
        top = name.split(".")[0]
        if top in STDLIB or top == "__future__":
            continue
        assert name.startswith(DAEMON_ALLOWED), f"{module} imports {name}"


def test_every_package_is_covered():
    """A new package must get a rule here."""
    packages = {p.parent.relative_to(ROOT).parts[0] for p in ROOT.glob("*/__init__.py")}
    covered = {folder.split("/")[0] for folder in RULES}
    assert packages - {"tests"} <= covered, packages - covered


def test_no_import_cycles():
    """Modules of the project import each other as a DAG (function-level imports count)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.glob("*/**/*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".venv") or rel.parts[0].startswith("."):
            continue
        mod = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        graph[mod] = set()
        for name in imports(path):
            graph[mod].add(name)
    mods = set(graph)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: {r for n in deps if (r := resolve(n)) and r != m and not m.startswith(r + ".")}
             for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, m, d]))
            if not state.get(d):
                visit(d, [*stack, m])
        state[m] = 2

    for m in sorted(mods):
        if not state.get(m):
            visit(m, [])
