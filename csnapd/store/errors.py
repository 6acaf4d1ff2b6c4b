"""Exceptions raised by the store layer.

Corruption is an error carrying a location, never an assert.  A full store is
an expected outcome with its own type, so callers can apply a policy to it.
"""

from __future__ import annotations

import errno


class StoreError(Exception):
    """Base class of every store-layer error."""


class CorruptionError(StoreError):
    """Metadata failed verification; ``block`` names where."""

    def __init__(self, block: int, kind: str, reason: str, path: str = "") -> None:
        self.block, self.kind, self.reason, self.path = block, kind, reason, path
        where = f" (tree path {path})" if path else ""
        super().__init__(f"corrupt {kind} block {block}: {reason}{where}")


class StoreFullError(StoreError):
    """No free chunk is left for a copy-out, a snapshot write or metadata.

    ``chunk`` is the logical chunk whose copy could not be made, when known,
    so a policy can pick the snapshots that needed it.
    """

    chunk: int | None = None
    #: Chunks that a checkpoint would make free (quarantined since a delete); when
    #: non-zero the space comes back once everything is sealed and checkpointed.
    awaiting_checkpoint: int = 0


class FormatError(StoreError):
    """Not a csnap store, or a format this version cannot open."""


class GeometryError(StoreError):
    """Sizes given to init (or found at open) are impossible or inconsistent."""


class StoreBusyError(StoreError, BlockingIOError):
    """Another process holds the store's lock (a running csnapd, or a writing tool).

    Also a BlockingIOError (EWOULDBLOCK, what the failed flock raised), so code that
    catches that keeps working; ``str()`` is the sentence for the user.
    """

    def __init__(self, path: str) -> None:
        super().__init__(errno.EWOULDBLOCK, f"{path} is in use by a running csnapd (or another "
                                            "csnap tool holds its lock); stop it first")
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


class SnapshotError(StoreError):
    """A snapshot operation named a missing snapshot or a duplicate."""


class NoSuchSnapshot(SnapshotError):
    """No live snapshot has that name or tag."""


class SnapshotExists(SnapshotError):
    """Name or tag already in use."""


class SnapshotHeld(SnapshotError):
    """The snapshot is held (its use count is not zero): it may not be deleted or squashed
    until every hold is released."""


class TooManySnapshots(SnapshotError):
    """Every sharemap slot is in use (live or still being deleted)."""


class OutOfRange(StoreError):
    """A chunk number lies outside the origin."""


class LimitError(StoreError):
    """A structural limit would be exceeded; the operation was not applied."""


class ReadOnlyError(StoreError):
    """The store was opened read-only or has been marked corrupt."""


class SealOrderError(StoreError):
    """The sealed-commit protocol was not followed (a caller bug, not a store problem).

    For example ``seal()`` when the journal has no room while a checkpoint or an
    earlier sealed transaction is still in flight, or ``seal_checkpoint()``
    while a sealed transaction is not done.
    """


class FencedError(StoreError, OSError):
    """This server may no longer write the store: its HA lease ended or a newer leader
    took the store over (its epoch is on disk). Nothing is written after it is raised;
    an OSError so the paths that stop on an I/O failure stop on it too."""
