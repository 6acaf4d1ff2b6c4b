#!/usr/bin/env bash
# Sets everything up and runs csnapd on default sparse files under ./data:
#   data/origin.img (1 GiB origin), data/store.img (2 GiB snapshot store),
#   clients on 127.0.0.1:4270, control socket data/csnapd.sock.
# Override with CSNAP_DATA, CSNAP_ORIGIN_SIZE, CSNAP_STORE_SIZE, CSNAP_LISTEN.
# The first run installs csnap into .venv (./setup.sh); later runs start at once unless
# pyproject.toml changed. Stop with Ctrl-C (or csnapctl shutdown): the store is left clean.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
DATA=${CSNAP_DATA:-data}
LISTEN=${CSNAP_LISTEN:-127.0.0.1:4270}
mkdir -p "$DATA"
[ -e "$DATA/origin.img" ] || truncate -s "${CSNAP_ORIGIN_SIZE:-1G}" "$DATA/origin.img"
if [ ! -e "$DATA/store.img" ]; then
  truncate -s "${CSNAP_STORE_SIZE:-2G}" "$DATA/store.img"
  .venv/bin/csnap-init --store "$DATA/store.img" --origin "$DATA/origin.img"
fi
SERVER=""
[ "$LISTEN" = 127.0.0.1:4270 ] || SERVER=" CSNAP_SERVER=$LISTEN"
echo "run.sh: starting csnapd; Ctrl-C stops it. In another shell, in $(pwd):" >&2
echo "  . .venv/bin/activate; export CSNAP_CONTROL=$DATA/csnapd.sock" \
     "CSNAP_ORIGIN=$DATA/origin.img CSNAP_STORE=$DATA/store.img$SERVER" >&2
exec .venv/bin/csnapd --store "$DATA/store.img" --origin "$DATA/origin.img" \
  --listen "$LISTEN" --control "$DATA/csnapd.sock"
