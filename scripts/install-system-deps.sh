#!/usr/bin/env bash
# Installs the real NBD clients the csnap-nbd tests and benchmark drive (Debian packages):
# qemu-utils (qemu-img, qemu-io, qemu-nbd), libnbd-bin (nbdinfo, nbdcopy, nbdsh) and fio;
# and ceph-common, whose `rbd merge-diff` (offline, on files) the diff tests check csnap's
# rbd diffs with. Idempotent; does nothing when the tools are already there. Needs root
# (apt-get); without it, prints what to install and exits 0 so setup can go on (the NBD
# and rbd tests then skip).
set -euo pipefail
if command -v qemu-img >/dev/null && command -v qemu-io >/dev/null \
   && command -v qemu-nbd >/dev/null && command -v nbdinfo >/dev/null \
   && command -v nbdcopy >/dev/null && command -v rbd >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-system-deps: not root; skipping. Install qemu-utils and libnbd-bin" \
       "(and optionally fio) to run the NBD tests, ceph-common for the rbd diff tests." >&2
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-system-deps: no apt-get; install qemu-utils, libnbd-bin and ceph-common" \
       "by hand." >&2
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  qemu-utils libnbd-bin >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ceph-common \
  >/dev/null
# fio is optional (its nbd engine is used when present); never fail setup over it.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fio \
  >/dev/null 2>&1 || echo "install-system-deps: fio not installed (optional)" >&2
