"""Operator-facing explanations: why a store or origin cannot be used, and what to do.

csnapd and the offline tools (csnap-init, csnap-check, csnap-dump) meet the same
problems on the same paths: a device that does not exist, is a directory or cannot be
opened, a store that was never initialised, a store too small for its origin.  The
store layer reports these as exceptions about *a* path; the sentences here say which
of the two devices it is and what the operator can do next, so every command words
the same problem the same way.  Nothing here changes a device: it only looks.
"""

from __future__ import annotations

import os
import stat

from csnap_client.units import format_size
from csnapd.store.device import FileDevice
from csnapd.store.superblock import read_slots

#: How much of the start of a device is read to tell a blank one (never initialised)
#: from one that holds other data.  Covers both superblock slots at every block size.
BLANK_PROBE_BYTES = 128 << 10
#: A store whose data area is smaller than this share of its origin gets a warning.
SMALL_STORE_SHARE = 0.10
#: The share of the origin docs/operations.md gives as typical for daily snapshots.
TYPICAL_SHARE = "20-30%"


def device_problem(role: str, path: str, writable: bool) -> str | None:
    """Why ``path`` cannot be opened as the ``role`` device ("store" or "origin"), or None.

    Checked before opening, so the message names the device by its role instead of
    showing a bare ``[Errno 2]`` with a path the reader has to match up.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{role} {path} does not exist"
    except PermissionError:
        return f"{role} {path}: permission denied (cannot look up the path)"
    except OSError as exc:
        return f"{role} {path}: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        return f"{role} {path} is a directory; give a file or a block device"
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        return f"{role} {path} is neither a regular file nor a block device"
    if not os.access(path, os.R_OK | (os.W_OK if writable else 0)):
        need = "read and write" if writable else "read"
        return (f"{role} {path}: permission denied (this user may not {need} it; run as root, "
                "or as a user with access, e.g. in group 'disk' for block devices)")
    return None


def create_file_hint(path: str, size: str) -> str:
    """How to create the missing device ``path``: a sparse file of ``size``, or a device."""
    return f"create it first (a sparse file: truncate -s {size} {path}), or give a block device"


def suggested_store_size(origin: str) -> str:
    """A store size to suggest for ``origin``: a quarter of it, at least 64M.

    A quarter is inside the 20-30% that docs/operations.md gives as typical for daily
    snapshots; without a readable origin, 2G (what ./run.sh uses for its 1G origin).
    """
    try:
        dev = FileDevice(origin, writable=False)
    except OSError:
        return "2G"
    try:
        origin_bytes = dev.size
    finally:
        dev.close()
    mib = max(64, -(-origin_bytes // 4 // (1 << 20)))
    return format_size(mib << 20)


def init_hint(store: str, origin: str | None) -> str:
    """The csnap-init command that makes a store at ``store``."""
    return f"csnap-init --store {store} --origin {origin or 'ORIGIN'}"


def is_blank(path: str) -> bool:
    """True if the start of ``path`` is all zeros (a new sparse file, a wiped device)."""
    try:
        with open(path, "rb") as f:
            head = f.read(BLANK_PROBE_BYTES)
    except OSError:
        return False
    return head.count(0) == len(head)


def not_a_store(store: str, origin: str | None) -> str | None:
    """The explanation when ``store`` is blank (never initialised), else None.

    A blank device was simply never initialised: say which csnap-init command makes it
    a store.  A device that holds data but no valid superblock may be the wrong device,
    or a store that lost both superblocks: never suggest overwriting it
    (:func:`format_problem` asks whether it is the right device instead).
    """
    if not _no_superblock(store) or not is_blank(store):
        return None
    return (f"store {store} is not initialised (it is blank: not a csnap store yet); "
            f"if it is the right device, make it a store with: {init_hint(store, origin)}")


def format_problem(store: str, origin: str | None, exc: Exception) -> str:
    """The message for a FormatError opening ``store``: what the store layer found, and
    for a device with no valid superblock at all, whether it is blank or the wrong one."""
    blank = not_a_store(store, origin)
    if blank:
        return blank
    if _no_superblock(store):
        return f"{exc}: is this the right device? (it holds data, but no csnap superblock)"
    return str(exc)


def _no_superblock(store: str) -> bool:
    """True if neither superblock slot of ``store`` holds a valid superblock."""
    try:
        dev = FileDevice(store, writable=False)
    except OSError:
        return False
    try:
        return all(f is None for _, f, _ in read_slots(dev))
    except OSError:
        return False
    finally:
        dev.close()


def store_size_warning(data_bytes: int, origin_bytes: int) -> str | None:
    """A warning when a store's data area is far too small for its origin, else None.

    Every origin chunk written after a snapshot costs one store chunk, so a store below
    SMALL_STORE_SHARE of its origin fills (and squashes snapshots, or fails origin
    writes with --on-full fail) after a small part of the origin has changed.
    """
    if origin_bytes <= 0 or data_bytes >= SMALL_STORE_SHARE * origin_bytes:
        return None
    share = 100 * data_bytes / origin_bytes
    return (f"the store has room for {format_size(data_bytes)} of snapshot data, only "
            f"{share:.1f}% of the {format_size(origin_bytes)} origin: when more of the origin "
            "than that changes after a snapshot, snapshots are squashed (or, with --on-full "
            f"fail, origin writes fail). {TYPICAL_SHARE} of the origin is typical: see "
            "'Sizing the store' in docs/operations.md")
