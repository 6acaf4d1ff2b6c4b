"""The offline tools as users run them: csnap-init, csnap-dump, csnap-check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    store, origin = tmp_path / "store.img", tmp_path / "origin.img"
    store.write_bytes(b"")
    origin.write_bytes(b"")
    with open(store, "r+b") as f:
        f.truncate(32 << 20)
    with open(origin, "r+b") as f:
        f.truncate(8 << 20)
    return store, origin


def test_init_refuses_to_overwrite_without_force(files):
    store, origin = files
    first = run("csnap-init", "--store", str(store), "--origin", str(origin), "--chunk-size",
                "4K", "--quiet")
    assert first.returncode == 0, first.stderr
    again = run("csnap-init", "--store", str(store), "--origin", str(origin), "--quiet")
    assert again.returncode == 1 and "already holds a csnap store; use --force" in again.stderr
    forced = run("csnap-init", "--store", str(store), "--origin", str(origin), "--force")
    assert forced.returncode == 0 and "created store" in forced.stdout


def test_init_explains_bad_geometry(files, tmp_path):
    store, origin = files
    tiny = tmp_path / "tiny.img"
    with open(tiny, "wb") as f:
        f.truncate(256 << 10)
    small = run("csnap-init", "--store", str(tiny), "--origin", str(origin))
    assert small.returncode == 1 and "too small" in small.stderr and "at least" in small.stderr
    bad = run("csnap-init", "--store", str(store), "--origin", str(origin), "--chunk-size", "3K")
    assert bad.returncode == 1 and "power of two" in bad.stderr
    junk = run("csnap-init", "--store", str(store), "--origin", str(origin), "--chunk-size", "x")
    assert junk.returncode == 1 and "not a size" in junk.stderr
    same = run("csnap-init", "--store", str(store), "--origin", str(store))
    assert same.returncode == 1 and "different devices" in same.stderr


def test_dump_every_section(files):
    store, origin = files
    assert run("csnap-init", "--store", str(store), "--origin", str(origin), "--chunk-size",
               "4K", "--quiet").returncode == 0
    for section in ("superblock", "snapshots", "tree", "journal", "bitmap"):
        human = run("csnap-dump", "--store", str(store), section)
        assert human.returncode == 0, (section, human.stderr)
        as_json = run("csnap-dump", "--store", str(store), section, "--json")
        assert as_json.returncode == 0
        json.loads(as_json.stdout)
    sb = json.loads(run("csnap-dump", "--store", str(store), "superblock", "--json").stdout)
    assert sb["current"]["chunk_size"] == 4096 and sb["current"]["version"] == 1
    bitmap = json.loads(run("csnap-dump", "--store", str(store), "bitmap", "--json").stdout)
    assert bitmap["free_chunks"] == sb["current"]["free_chunks"]


def test_dump_and_check_refuse_a_file_that_is_not_a_store(files):
    _, origin = files
    dump = run("csnap-dump", "--store", str(origin), "superblock")
    assert dump.returncode == 2 and "not a csnap store" in dump.stderr
    check = run("csnap-check", "--store", str(origin), "--json")
    assert check.returncode == 2
    assert json.loads(check.stdout)["status"] == "unreadable"


def test_check_clean_store_json(files):
    store, origin = files
    assert run("csnap-init", "--store", str(store), "--origin", str(origin),
               "--quiet").returncode == 0
    check = run("csnap-check", "--store", str(store), "--origin", str(origin), "--json")
    assert check.returncode == 0
    report = json.loads(check.stdout)
    assert report["status"] == "clean" and report["problems"] == []


def test_dump_journal_decodes_compact_records_and_check_agrees(files):
    """A crashed store with compact transactions pending: csnap-dump journal lists each
    transaction's images and records; csnap-check replays them and finds nothing wrong."""
    from csnapd.store.device import FileDevice
    from csnapd.store.store import Store

    store, origin = files
    assert run("csnap-init", "--store", str(store), "--origin", str(origin), "--chunk-size",
               "4K", "--quiet").returncode == 0
    s = Store.open(FileDevice(str(store)), FileDevice(str(origin)))
    s.create_snapshot("a")
    s.commit()
    s.origin_write([(0, 4)])
    s.commit()
    s.origin_write([(4, 2)])  # the leaf and the bitmap have images now: records only
    s.commit()
    s.dev.close()  # a crash: no checkpoint, the three transactions stay in the journal
    shown = run("csnap-dump", "--store", str(store), "journal", "--json")
    assert shown.returncode == 0, shown.stderr
    journal = json.loads(shown.stdout)
    assert journal["format"] == "compact"
    txns = journal["pending_transactions"]
    assert len(txns) == 3 and txns[-1]["blocks"] == 2 and txns[-1]["images"] == []
    last = txns[-1]["records"]
    assert [r["entry"] for r in last if "entry" in r] == [4, 5]
    assert any("bits" in r for r in last) and "super" in last[-2]
    assert last[-2]["super"]["exceptions"] == 6
    # the copies share the journal's flush: a DATA record vouches for them
    assert [(d["store_chunk"], d["chunks"]) for d in last[-1]["data"]] == [
        (s.snapshot_lookup(0, 4), 2)]
    assert txns[1]["images"] and txns[1]["parity"] == "ok"
    human = run("csnap-dump", "--store", str(store), "journal")
    assert human.returncode == 0 and "'entry': 4" in human.stdout
    check = run("csnap-check", "--store", str(store), "--quiet")
    assert check.returncode == 0 and "clean" in check.stdout, check.stdout + check.stderr
