#!/usr/bin/env bash
# Creates .venv and installs csnap (editable) with its test dependencies, from PyPI.
#
# Fast when nothing changed: the install is recorded in .venv/.csnap-setup, a hash of
# what it depends on (pyproject.toml, this script, the top-level packages, the venv's
# Python, this checkout's path). If that still matches and every dependency is still
# installed, setup does nothing (a fraction of a second), so ./run.sh starts at once.
# Editing the code needs no reinstall (the install is editable); changing
# pyproject.toml (dependencies, scripts, packages) or adding a package does.
#
#   ./setup.sh           install if needed
#   ./setup.sh --force   install again even if nothing changed
#   ./setup.sh --check   exit 0 if the install is current, 1 if one is needed; installs nothing
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
STAMP=.venv/.csnap-setup
LOG=.venv/setup.log
MODE=${1:-}
case "$MODE" in
  ""|--force|--check|--print-stamp) ;;
  *) echo "usage: $0 [--force | --check]" >&2; exit 2 ;;
esac

# What the install depends on, as one hash.
stamp() {
  local python=$PY
  [ -x .venv/bin/python ] && python=.venv/bin/python
  {
    "$python" -c 'import sys; print(sys.version, sys.base_prefix)'
    pwd -P
    cat pyproject.toml setup.sh
    ls -d ./*/__init__.py
  } | sha256sum | cut -d' ' -f1
}

# True if every requirement of the installed csnap (with the test extra) is installed,
# and csnap itself is this checkout.
installed() {
  .venv/bin/python - <<'EOF' 2>/dev/null
import importlib.metadata as md, os, re, sys
dist = md.distribution("csnap")
for req in dist.requires or []:
    md.distribution(re.match(r"[A-Za-z0-9._-]+", req).group())
import csnapd
here = os.path.realpath(os.getcwd())
sys.exit(os.path.dirname(os.path.dirname(os.path.realpath(csnapd.__file__))) != here)
EOF
}

if [ "$MODE" = --print-stamp ]; then  # for the tests of this script
  stamp
  exit 0
fi
if [ "$MODE" != --force ] && [ -x .venv/bin/python ] && [ -f "$STAMP" ] \
   && [ "$(cat "$STAMP")" = "$(stamp)" ] && installed; then
  exit 0
fi
if [ "$MODE" = --check ]; then
  exit 1
fi

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: csnap needs Python 3.11 or newer ($PY is $("$PY" --version 2>&1));" \
       "set PYTHON=/path/to/python3.11 or newer" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PY" --version 2>&1)" >&2
  "$PY" -m venv .venv
fi
echo "setup: installing csnap and its dependencies from PyPI into .venv" \
     "(first run, or pyproject.toml changed; a minute or so; log in $LOG)" >&2
rm -f "$STAMP"
if ! { .venv/bin/python -m pip install --upgrade pip \
       && .venv/bin/python -m pip install -e '.[test]'; } >"$LOG" 2>&1; then
  echo "setup: pip install failed; the end of $LOG:" >&2
  tail -n 25 "$LOG" >&2
  exit 1
fi
stamp >"$STAMP"
echo "setup: done" >&2
