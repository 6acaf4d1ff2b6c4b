#!/usr/bin/env bash
# Sets up the environment (./setup.sh), then runs the linter and the whole test suite.
#
# Besides Python packages from PyPI, the NBD gateway tests drive real NBD clients, which
# are Debian packages: scripts/install-system-deps.sh installs qemu-utils (qemu-img,
# qemu-io, qemu-nbd), libnbd-bin (nbdinfo, nbdcopy) and, if available, fio, with apt-get
# when run as root and they are missing. Not root, no apt-get, or CSNAP_SKIP_SYSTEM_DEPS=1:
# it installs nothing, says what is missing, and those tests are skipped.
# Extra arguments go to pytest (e.g. ./test.sh tests/tools -x).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
scripts/install-system-deps.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -n 2 -q "$@"
