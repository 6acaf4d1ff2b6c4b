"""The registry of connected snapshot clients, kept in a small state file.

Read locks live only in server memory.  After a crash, the clients that were
reading must re-upload the locks they still hold before any origin write may
overwrite a chunk they are reading; this file tells a restarted server which
clients to wait for (until they finish uploading or the grace period ends).
Each change is written to a temporary file, fsynced and renamed over the old
one, so the file is always either the old or the new list.
"""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger("csnapd.registry")


class ClientRegistry:
    """Persistent set of snapshot client ids."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.clients: set[int] = set()

    def load(self) -> set[int]:
        try:
            with open(self.path) as f:
                data = json.load(f)
            return {int(c) for c in data.get("snapshot_clients", [])}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable client registry %s: %s", self.path, exc)
            return set()

    def save(self, clients: set[int]) -> None:
        if clients == self.clients and os.path.exists(self.path):
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"snapshot_clients": sorted(clients)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dirfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        self.clients = set(clients)
