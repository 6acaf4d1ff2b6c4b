"""Format versions and feature bits, as qcow2 does: refuse what cannot be understood."""

from __future__ import annotations

import dataclasses

import pytest

from csnapd.store import create
from csnapd.store import format as fmt
from csnapd.store.device import MemoryDevice
from csnapd.store.errors import FormatError
from csnapd.store.store import Store
from csnapd.store.superblock import load, write_slot


def _store(**changes: int) -> tuple[MemoryDevice, MemoryDevice]:
    dev, origin = MemoryDevice(8 << 20), MemoryDevice(64 * 4096)
    create.create(dev, origin.size, chunk_size=4096, block_size=512, journal_bytes=128 * 512)
    f, _, _ = load(dev)
    f = dataclasses.replace(f, generation=f.generation + 1, **changes)
    write_slot(dev, f)
    return dev, origin


def test_unknown_incompatible_feature_refuses_to_open():
    dev, origin = _store(incompat=1 << 12)
    with pytest.raises(FormatError, match="unknown incompatible features 0x1000"):
        Store.open(dev, origin)


def test_newer_format_version_refuses_to_open():
    dev, origin = _store(version=fmt.FORMAT_VERSION + 1)
    with pytest.raises(FormatError, match="newer than this csnap understands"):
        Store.open(dev, origin)


def test_unknown_compatible_feature_is_ignored_and_autoclear_is_cleared():
    dev, origin = _store(compat=1 << 3, autoclear=1 << 5)
    store = Store.open(dev, origin)
    assert store.sb.compat == 1 << 3
    assert store.sb.autoclear == 0  # a writer that does not know the bit clears it
    store.close()
    f, _, _ = load(dev)
    assert f.compat == 1 << 3 and f.autoclear == 0
