"""A small Dockerfile and .dockerignore reader for the packaging tests."""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Instruction:
    """One instruction: keyword (upper case), its text, and the line it starts on."""

    keyword: str
    text: str
    line: int

    def exec_form(self) -> list[str]:
        """The JSON array form (``["a", "b"]``); shell form is split like a shell would."""
        text = self.text.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
            return value
        return shlex.split(text)


def parse(path: Path) -> list[Instruction]:
    """Instructions in order, with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment inside a continued instruction
        if not buf:
            start = number
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        joined = " ".join(part for part in buf if part)
        keyword, _, rest = joined.partition(" ")
        out.append(Instruction(keyword.upper(), rest.strip(), start))
        buf = []
    assert not buf, f"{path}: unfinished continuation at the end"
    return out


def ignore_patterns(path: Path) -> list[str]:
    """.dockerignore patterns, comments and blank lines dropped."""
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _matches(pattern: str, rel: str) -> bool:
    pattern = pattern.strip("/")
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    if pattern.startswith("**/"):
        tail = pattern[3:]
        return any(fnmatch.fnmatchcase("/".join(parts[i:j]), tail)
                   for j in range(1, len(parts) + 1) for i in range(j))
    return any(fnmatch.fnmatchcase(p, pattern) for p in prefixes)


def excluded(patterns: list[str], rel: str) -> bool:
    """Whether the build context leaves out ``rel`` (the last matching pattern decides)."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if _matches(pattern.lstrip("!"), rel):
            result = not negate
    return result


def context_files(root: Path) -> list[str]:
    """Paths (relative, with /) that ``docker build root`` would send."""
    patterns = ignore_patterns(root / ".dockerignore")
    has_exceptions = any(p.startswith("!") for p in patterns)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        if not has_exceptions:
            dirnames[:] = [d for d in dirnames
                           if not excluded(patterns, f"{rel_dir}/{d}".lstrip("/"))]
        for name in filenames:
            rel = f"{rel_dir}/{name}".lstrip("/")
            if not excluded(patterns, rel):
                files.append(rel)
    return sorted(files)
