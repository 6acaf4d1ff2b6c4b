"""Build stores with many exceptions through the store layer directly (no server).

Going through csnapd would copy every chunk of data (10 million 4 KiB copy-outs are 40 GB of
writes), so the builder opens the store in-process and replaces the copier's ``queue`` with a
no-op: every metadata change (B-tree entries, allocation bitmaps, journal commits,
checkpoints) is real, only the chunk *data* copies are skipped. The result is a valid store
(csnap-check accepts it; the copied chunks simply read as zeros).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from csnapd.store.paths import open_store

BIN = Path(sys.executable).parent


@dataclass
class BuiltStore:
    """A store file pair and what the builder put in it."""

    store: Path
    origin: Path
    chunk_size: int
    exceptions: int  # total exceptions in the tree
    keep_chunks: int  # chunks [0, keep_chunks) are exceptions of snapshot "keep"
    doomed_chunks: int  # chunks [keep_chunks, keep_chunks + doomed) belong only to "doomed"
    build_seconds: float


def make_files(directory: Path, origin_bytes: int, store_bytes: int, chunk_size: int,
               *init_args: str) -> tuple[Path, Path]:
    """Sparse origin and store files, the store initialised by csnap-init."""
    directory.mkdir(parents=True, exist_ok=True)
    origin, store = directory / "origin.img", directory / "store.img"
    for path, size in ((origin, origin_bytes), (store, store_bytes)):
        with open(path, "wb") as f:
            f.truncate(size)
    subprocess.run([str(BIN / "csnap-init"), "--store", str(store), "--origin", str(origin),
                    "--chunk-size", str(chunk_size), "--quiet", "--force", *init_args],
                   check=True, capture_output=True, text=True)
    return origin, store


def build(directory: Path, exceptions: int, doomed: int, chunk_size: int = 4096,
          step: int = 4096, commit_every: int = 16) -> BuiltStore:
    """A store whose snapshot ``keep`` owns ``exceptions - doomed`` exceptions (origin
    first-touch writes) and whose snapshot ``doomed`` owns ``doomed`` more (snapshot writes
    to chunks it shared with the origin). Data copies are skipped (module docstring)."""
    doomed = min(doomed, exceptions)
    keep = exceptions - doomed
    origin_chunks = exceptions + 1024
    # Every exception takes a store chunk; metadata is roughly 40 bytes per exception.
    store_chunks = exceptions + exceptions // 40 + 65536
    origin, store_path = make_files(directory, origin_chunks * chunk_size,
                                    store_chunks * chunk_size, chunk_size)
    t0 = time.perf_counter()
    store = open_store(str(store_path), str(origin), cache_size=256 << 20)
    try:
        store.copier.queue = lambda source, from_store, dest: None  # type: ignore[method-assign]
        store.create_snapshot("keep")
        store.commit()
        ops = 0
        for start in range(0, keep, step):
            store.origin_write([[start, min(step, keep - start)]])
            ops += 1
            if ops % commit_every == 0:
                store.commit()
        store.commit()
        doomed_entry = store.create_snapshot("doomed")
        store.commit()
        for start in range(keep, keep + doomed, step):
            store.snapshot_write(doomed_entry.slot, [[start, min(step, keep + doomed - start)]])
            ops += 1
            if ops % commit_every == 0:
                store.commit()
        store.commit()
    finally:
        store.close()
    return BuiltStore(store_path, origin, chunk_size, exceptions, keep, doomed,
                      time.perf_counter() - t0)


def remove(built: BuiltStore) -> None:
    """Delete the files of a built store."""
    for path in (built.store, built.origin):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
