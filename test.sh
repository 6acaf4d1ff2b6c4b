#!/usr/bin/env bash
# Sets up the environment (./setup.sh) and runs the whole test suite plus the linter.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
# real NBD clients (qemu-utils, libnbd-bin) for the gateway tests; skipped if not root
scripts/install-system-deps.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -n 2 -q "$@"
