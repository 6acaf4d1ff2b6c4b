#!/usr/bin/env bash
# Installs the real NBD clients the csnap-nbd tests and benchmark drive (Debian packages):
# qemu-utils (qemu-img, qemu-io, qemu-nbd), libnbd-bin (nbdinfo, nbdcopy, nbdsh) and fio.
# Nothing else of csnap needs them: csnapd, the tools and the library need only Python.
# Idempotent; does nothing when the tools are already there. Needs root (apt-get); without
# it, or with CSNAP_SKIP_SYSTEM_DEPS=1, prints what to install and exits 0 so setup can go
# on (the NBD client tests then skip).
set -euo pipefail
if command -v qemu-img >/dev/null && command -v qemu-io >/dev/null \
   && command -v qemu-nbd >/dev/null && command -v nbdinfo >/dev/null \
   && command -v nbdcopy >/dev/null; then
  exit 0
fi
WHY="for the NBD gateway tests, which drive real NBD clients"
if [ "${CSNAP_SKIP_SYSTEM_DEPS:-}" = 1 ]; then
  echo "install-system-deps: CSNAP_SKIP_SYSTEM_DEPS=1: not installing qemu-utils and" \
       "libnbd-bin ($WHY); those tests will be skipped." >&2
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-system-deps: not root; skipping. Install qemu-utils and libnbd-bin" \
       "(and optionally fio) $WHY; until then those tests are skipped." >&2
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-system-deps: no apt-get; install qemu-utils and libnbd-bin by hand" \
       "($WHY); until then those tests are skipped." >&2
  exit 0
fi
echo "install-system-deps: installing the Debian packages qemu-utils and libnbd-bin" \
     "(and fio if available) with apt-get, $WHY (CSNAP_SKIP_SYSTEM_DEPS=1 skips this)" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  qemu-utils libnbd-bin >/dev/null
# fio is optional (its nbd engine is used when present); never fail setup over it.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fio \
  >/dev/null 2>&1 || echo "install-system-deps: fio not installed (optional)" >&2
