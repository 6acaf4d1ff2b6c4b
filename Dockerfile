# csnapd in a container: the csnap snapshot metadata server.
#
# Build:   docker build -t csnap .
#
# Files in a volume (sparse files made once with csnap-init):
#   docker volume create csnap-data
#   docker run --rm -v csnap-data:/data --entrypoint sh csnap -c \
#     'truncate -s 10G /data/origin.img && truncate -s 4G /data/store.img &&
#      csnap-init --store /data/store.img --origin /data/origin.img'
#   docker run -d --name csnapd -v csnap-data:/data \
#     -p 4270:4270 -p 127.0.0.1:9270:9270 csnap
#
# Real block devices (--device passes the node; --group-add gives the csnap user the
# device's group, usually "disk"; arguments after the image replace the default CMD):
#   docker run --rm --device /dev/vg0/data --device /dev/vg0/snapstore \
#     --group-add "$(stat -c %g /dev/vg0/snapstore)" --entrypoint csnap-init csnap \
#     --store /dev/vg0/snapstore --origin /dev/vg0/data
#   docker run -d --name csnapd --device /dev/vg0/data --device /dev/vg0/snapstore \
#     --group-add "$(stat -c %g /dev/vg0/snapstore)" \
#     -p 4270:4270 -p 127.0.0.1:9270:9270 csnap \
#     --store /dev/vg0/snapstore --origin /dev/vg0/data --listen 0.0.0.0:4270 \
#     --metrics 0.0.0.0:9270
#
# Administer:  docker exec csnapd csnapctl status     (CSNAP_CONTROL is set)
# Stop:        docker stop -t 90 csnapd               (SIGTERM: commit, mark clean, exit 0)
# More in docs/packaging.md.

FROM python:3.11-slim

LABEL org.opencontainers.image.title="csnap" \
      org.opencontainers.image.description="Clustered snapshot metadata server (csnapd)" \
      org.opencontainers.image.licenses="GPL-2.0-or-later"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CSNAP_CONTROL=/run/csnapd/control.sock

# The package from this source tree (no test extras), then the sources are dropped.
# .dockerignore keeps tests, docs, virtualenvs and data out of the build context.
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir . \
    && rm -rf /src

# An unprivileged user; "disk" (gid 6 in Debian) can open block devices that are
# root:disk 0660, the usual owner of LVM and disk nodes on Debian-like hosts.
RUN groupadd --system --gid 4270 csnap \
    && useradd --system --uid 4270 --gid csnap --groups disk \
        --home-dir /data --no-create-home --shell /usr/sbin/nologin csnap \
    && mkdir -p /data /run/csnapd \
    && chown csnap:csnap /data /run/csnapd \
    && chmod 0750 /data /run/csnapd

WORKDIR /data
VOLUME ["/data"]
# 4270: clients (csnap protocol over TCP); 9270: Prometheus metrics (--metrics).
EXPOSE 4270 9270
# The csnap user (uid 4270, group csnap, member of disk); numeric so that the runtime can
# check it is not root without reading the image.
USER 4270

# Healthy while the control socket answers a status request (a status walks the
# exception tree: on very large stores raise the interval).
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["csnapctl", "--timeout", "10", "status"]

# SIGTERM makes csnapd finish queued requests, commit and mark the store clean.
STOPSIGNAL SIGTERM
ENTRYPOINT ["csnapd"]
CMD ["--store", "/data/store.img", "--origin", "/data/origin.img", \
     "--listen", "0.0.0.0:4270", "--control", "/run/csnapd/control.sock", \
     "--metrics", "0.0.0.0:9270"]
