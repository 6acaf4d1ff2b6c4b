#!/usr/bin/env bash
# Sets everything up and runs csnapd on default sparse files under ./data:
#   data/origin.img (1 GiB origin), data/store.img (2 GiB snapshot store),
#   clients on 127.0.0.1:4270, control socket data/csnapd.sock.
# Override with CSNAP_DATA, CSNAP_ORIGIN_SIZE, CSNAP_STORE_SIZE, CSNAP_LISTEN.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
DATA=${CSNAP_DATA:-data}
mkdir -p "$DATA"
[ -e "$DATA/origin.img" ] || truncate -s "${CSNAP_ORIGIN_SIZE:-1G}" "$DATA/origin.img"
if [ ! -e "$DATA/store.img" ]; then
  truncate -s "${CSNAP_STORE_SIZE:-2G}" "$DATA/store.img"
  .venv/bin/csnap-init --store "$DATA/store.img" --origin "$DATA/origin.img"
fi
exec .venv/bin/csnapd --store "$DATA/store.img" --origin "$DATA/origin.img" \
  --listen "${CSNAP_LISTEN:-127.0.0.1:4270}" --control "$DATA/csnapd.sock"
