"""csnap-dump: print a store's metadata (superblock, snapshots, tree, journal, bitmap, grants).

Read-only; a journal that needs replay is replayed in memory only, so what is
shown is what a server would see, and the store is left byte-identical.  Safe while
csnapd runs (what it shows may then be slightly behind).

Exit status: 0 printed, 2 the store cannot be read (missing, not a store, damaged).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from csnap_client.version import add_version_option
from csnapd.explain import device_problem, format_problem
from csnapd.store import datacheck
from csnapd.store import format as fmt
from csnapd.store import journal as jnl
from csnapd.store.errors import FormatError, StoreError
from csnapd.store.paths import open_store
from csnapd.store.superblock import read_slots
from csnapd.store.walk import bitmap_int, set_bits, snapshot_usage, walk_tree

SECTIONS = ("superblock", "snapshots", "tree", "journal", "bitmap", "grants")
#: What each section shows, for --help.
SECTION_HELP = {
    "superblock": "both superblock slots, the current one, and what recovery did",
    "snapshots": "every snapshot: slot, name, tag, state, priority, holds, unique/shared chunks",
    "tree": "the exception B-tree, block by block (index nodes and leaves)",
    "journal": "pending journal transactions, with both commit record copies and CRCs",
    "bitmap": "allocated chunk ranges and metadata block ranges",
    "grants": "client grants: origin chunks exposed to clients, snapshot writer grants",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    sections = "\n".join(f"  {name:<11} {text}" for name, text in SECTION_HELP.items())
    p = argparse.ArgumentParser(prog="csnap-dump", description=__doc__,
                                epilog=f"sections:\n{sections}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(p)
    p.add_argument("--store", required=True, metavar="PATH",
                   help="the snapshot store file or block device (opened read-only)")
    p.add_argument("section", choices=SECTIONS, metavar="SECTION",
                   help=f"what to print: {', '.join(SECTIONS)} (see below)")
    p.add_argument("--json", action="store_true",
                   help="print JSON instead of indented text (for scripts and bug reports)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = device_problem("store", args.store, writable=False)
    if problem:
        print(f"csnap-dump: {problem}", file=sys.stderr)
        return 2
    try:
        store = open_store(args.store, None, readonly=True)
    except FormatError as exc:
        print(f"csnap-dump: {format_problem(args.store, None, exc)}", file=sys.stderr)
        return 2
    except (OSError, StoreError) as exc:
        print(f"csnap-dump: {exc}", file=sys.stderr)
        return 2
    try:
        data = globals()[f"dump_{args.section}"](store)
    except (OSError, StoreError) as exc:
        print(f"csnap-dump: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    try:
        if args.json:
            json.dump(data, sys.stdout, indent=1, default=str)
            print()
        else:
            _print_human(data)
        sys.stdout.flush()
    except BrokenPipeError:  # `csnap-dump ... | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _super_dict(f: fmt.SuperFields) -> dict[str, Any]:
    d = dataclasses.asdict(f)
    d["uuid"] = f.uuid.hex()
    return d


def dump_grants(store) -> dict[str, Any]:  # noqa: ANN001
    """The client grant table: exposures (origin chunks) and writer grants (slots)."""
    g = store.grants
    records = []
    for i, rec in enumerate(g.records):
        if rec is None:
            continue
        row: dict[str, Any] = {"block": g.addrs[i // g.per_block], "client": rec.client,
                               "kind": "origin" if rec.kind == fmt.GRANT_ORIGIN else "writer"}
        if rec.kind == fmt.GRANT_ORIGIN:
            row["runs"] = [list(r) for r in rec.runs or []]
            row["chunks"] = sum(n for _, n in rec.runs or [])
        else:
            row["slot"] = rec.slot
        records.append(row)
    return {"blocks": list(g.addrs), "records": records}


def dump_superblock(store) -> dict[str, Any]:  # noqa: ANN001
    slots = {}
    for slot, f, problem in read_slots(store.dev):
        slots[f"slot{slot}"] = _super_dict(f) if f else {"invalid": problem}
    return {"current": _super_dict(store.sb), "recovery": dataclasses.asdict(store.recovery),
            **slots}


def dump_snapshots(store) -> list[dict[str, Any]]:  # noqa: ANN001
    usage = snapshot_usage(store)
    states = {fmt.SNAP_LIVE: "live", fmt.SNAP_DELETING: "deleting",
              fmt.SNAP_IN_PASS: "deleting (in pass)", fmt.SNAP_CREATING: "creating"}
    out = []
    for e in store.snaps.entries:
        if e.state == fmt.SNAP_FREE:
            continue
        u = usage.get(e.slot, {"unique": 0, "shared": 0})
        out.append({"slot": e.slot, "name": e.name, "tag": e.tag, "state": states[e.state],
                    "squashed": e.squashed, "priority": e.priority, "holds": e.use_count,
                    "created_ns": e.created_ns, "bytes": store.snapshot_bytes(e.slot), **u})
    return out


def dump_tree(store) -> list[dict[str, Any]]:  # noqa: ANN001
    out = []
    for v in walk_tree(store):
        item: dict[str, Any] = {"block": v.addr, "path": v.path, "range": [v.lo, v.hi]}
        if v.depth:
            item["node"] = [[k, c] for k, c in zip(v.keys, v.children, strict=True)]
        else:
            item["leaf"] = [[k, [[st, hex(sm)] for st, sm in excs]]
                            for k, excs in v.entries]
            item["bytes"] = v.nbytes
        out.append(item)
    return out


FORMATS = {jnl.SINGLE_CRC: "single-crc", jnl.REDUNDANT: "redundant", jnl.COMPACT: "compact"}


def dump_journal(store) -> dict[str, Any]:  # noqa: ANN001
    """The pending transactions between the checkpoint and the head, block by block.

    For the redundant and compact formats each transaction shows both commit
    record copies, every payload block's listed CRC and whether it verified or
    was rebuilt from parity, and the parity block; a compact transaction also
    lists its records, decoded.  ``notes`` is what recovery mended or dropped.
    """
    j = store.journal  # tail and sequence as the superblock slot gives them
    scan = jnl.scan(store.dev, j.start, j.nblocks, j.block_size, j.store_id, j.tail,
                    j.tail_seq, j.version)
    datacheck.check_tail(store.dev, store.sb.chunk_size, j.start, scan)  # as recovery does
    return {"start": j.start, "blocks": j.nblocks, "tail": j.tail, "tail_seq": j.tail_seq,
            "head": scan.head, "next_seq": scan.next_seq, "format": FORMATS[j.version],
            "max_images": jnl.max_images(j.nblocks, j.block_size, j.version),
            "epochs": scan.epochs, "notes": scan.notes,
            "torn_dropped_at": scan.torn,
            "pending_transactions": [_txn_dict(t, j) for t in scan.transactions]}


def _txn_dict(t: jnl.Transaction, j) -> dict[str, Any]:  # noqa: ANN001
    out: dict[str, Any] = {"seq": t.seq, "position": t.position, "blocks": t.span}
    rec = t.record
    if rec is None:
        out["homes"] = [h for h, _ in t.images]
        return out
    n, span = rec.payload_blocks, rec.span

    def status(offset: int) -> str:
        return "damaged" if offset in t.damaged else "ok"

    out.update(epoch=t.epoch, leading=status(0), trailing=status(span - 1),
               trailing_position=(t.position + span - 1) % j.nblocks)
    if span == n + 3:
        out.update(parity=status(n + 1), parity_crc=f"0x{rec.parity_crc:08x}")
    out["images"] = [{"home": home, "crc": f"0x{crc:08x}",
                      "status": "rebuilt from parity" if i == t.rebuilt else "ok"}
                     for i, (home, crc) in enumerate(zip(rec.homes, rec.crcs, strict=False))]
    if isinstance(rec, fmt.CommitRecord3):
        blocks = range(len(rec.homes), n)
        out.update(record_bytes=rec.stream_bytes, inline_bytes=len(rec.inline),
                   record_blocks=[{"crc": f"0x{rec.crcs[i]:08x}",
                                   "status": "rebuilt from parity" if i == t.rebuilt else "ok"}
                                  for i in blocks],
                   records=[_record_dict(r) for r in
                            fmt.decode_records(t.records, j.start + t.position)])
    return out


def _record_dict(r: tuple) -> dict[str, Any]:
    kind = r[0]
    if kind == fmt.REC_ENTRY:
        return {"entry": r[2], "leaf": r[1],
                "exceptions": [[st, hex(sm)] for st, sm in r[3]]}
    if kind == fmt.REC_BITS:
        return {"bits": r[2], "count": r[3], "value": r[4], "bitmap_block": r[1]}
    if kind == fmt.REC_SUPER:
        return {"super": r[1]}
    if kind == fmt.REC_CLONE:
        return {"clone_fill": r[1]}
    if kind == fmt.REC_REVERT:
        return {"revert": r[1]}
    if kind == fmt.REC_GEOMETRY:
        return {"geometry": r[1]}
    if kind == fmt.REC_DATA:
        return {"data": [{"store_chunk": first, "chunks": n, "crc32c": f"0x{crc:08x}"}
                         for first, n, crc in r[1]]}
    grant = r[3]
    return {"grant_slot": r[2], "grant_block": r[1],
            "record": None if grant is None else {"client": grant.client, "kind": grant.kind,
                                                  "slot": grant.slot, "runs": grant.runs}}


def dump_bitmap(store) -> dict[str, Any]:  # noqa: ANN001
    f = store.sb
    chunks = bitmap_int(store, fmt.BlockKind.CBITMAP) & ((1 << f.store_chunks) - 1)
    k = f.chunk_size // f.block_size
    meta = bitmap_int(store, fmt.BlockKind.MBITMAP) & ((1 << (f.store_chunks * k)) - 1)
    return {"store_chunks": f.store_chunks, "free_chunks": f.free_chunks,
            "allocated_ranges": _runs(chunks), "metadata_block_ranges": _runs(meta)}


def _runs(value: int) -> list[list[int]]:
    runs: list[list[int]] = []
    for bit in set_bits(value):
        if runs and runs[-1][0] + runs[-1][1] == bit:
            runs[-1][1] += 1
        else:
            runs.append([bit, 1])
    return runs


def _print_human(data: Any, indent: int = 0) -> None:  # noqa: ANN401
    pad = " " * indent
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict | list) and value:
                print(f"{pad}{key}:")
                _print_human(value, indent + 2)
            else:
                print(f"{pad}{key}: {value}")
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, dict):
                print(pad + "  ".join(f"{k}={v}" for k, v in item.items()))
            else:
                print(f"{pad}{item}")
    else:
        print(f"{pad}{data}")


if __name__ == "__main__":
    sys.exit(main())
