#!/usr/bin/env bash
# Installs the real outside programs some tests drive (Debian packages):
#   qemu-utils (qemu-img, qemu-io, qemu-nbd), libnbd-bin (nbdinfo, nbdcopy, nbdsh), fio:
#     real NBD clients for the csnap-nbd gateway tests and benchmark;
#   ceph-common: `rbd merge-diff` (offline, on files) checks csnap's rbd diffs;
#   etcd-server, etcd-client: a real etcd for the high-availability (leader election) tests;
#   strace: counts, from outside, what a fenced old leader writes in the split-brain test.
# csnapd, the tools and the library need none of them: only Python.
# Idempotent; does nothing when the tools are already there. Needs root (apt-get); without
# it, or with CSNAP_SKIP_SYSTEM_DEPS=1, prints what to install and exits 0 so setup can go
# on (the tests that need them are then skipped).
set -euo pipefail
have_all() {
  for tool in qemu-img qemu-io qemu-nbd nbdinfo nbdcopy rbd etcd etcdctl strace; do
    command -v "$tool" >/dev/null || return 1
  done
}
if have_all; then
  exit 0
fi
PKGS="qemu-utils libnbd-bin ceph-common etcd-server etcd-client strace"
WHY="for the NBD gateway, rbd diff and etcd failover tests, which drive the real programs"
if [ "${CSNAP_SKIP_SYSTEM_DEPS:-}" = 1 ]; then
  echo "install-system-deps: CSNAP_SKIP_SYSTEM_DEPS=1: not installing $PKGS ($WHY);" \
       "those tests will be skipped." >&2
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-system-deps: not root; skipping. Install $PKGS (and optionally fio)" \
       "$WHY; until then those tests are skipped." >&2
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-system-deps: no apt-get; install $PKGS by hand ($WHY);" \
       "until then those tests are skipped." >&2
  exit 0
fi
echo "install-system-deps: installing the Debian packages $PKGS (and fio if available)" \
     "with apt-get, $WHY (CSNAP_SKIP_SYSTEM_DEPS=1 skips this)" >&2
apt-get update -qq
# shellcheck disable=SC2086  # the package list is meant to split
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
# fio is optional (its nbd engine is used when present); never fail setup over it.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fio \
  >/dev/null 2>&1 || echo "install-system-deps: fio not installed (optional)" >&2
# The Debian package starts an etcd service on the default ports; the tests run their own
# etcd on free loopback ports, so the packaged one is left as the system has it.
