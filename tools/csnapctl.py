"""csnapctl: administer a running csnapd through its control socket.

Commands: create (--from: a clone), delete, list (--tree), status, set, hold, release,
revert, shutdown, forget-client, grow. Human-readable output by default, ``--json`` for scripts.
Exit codes: 0 ok, 1 the server refused (error message on stderr) or did not answer in
time, 2 usage error, 3 cannot connect to the control socket (the message says whether
csnapd is running, and with which socket).

The control socket path is, in order: ``--control PATH``, the environment variable
``CSNAP_CONTROL``, ``/run/csnapd/control.sock`` if it exists, else ``data/csnapd.sock``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import pwd
import sys
import time
from typing import Any

from csnap_client.control import ControlClient
from csnap_client.protocol import (
    ErrorCode,
    PermissionDeniedError,
    ProtocolError,
    RemoteError,
    SnapshotExistsError,
    SnapshotHeldError,
    UnknownSnapshotError,
)
from csnap_client.units import format_size
from csnap_client.version import add_version_option
from tools import csnapctl_grow
from tools.cli import RunningServer, run_main, running_servers, servers_hint

SYSTEM_SOCKET = "/run/csnapd/control.sock"
LOCAL_SOCKET = "data/csnapd.sock"
EXIT_SERVER, EXIT_USAGE, EXIT_CONNECT = 1, 2, 3


def default_control() -> str:
    """The control socket to use when --control is not given (see the module docstring)."""
    env = os.environ.get("CSNAP_CONTROL")
    if env:
        return env
    return SYSTEM_SOCKET if os.path.exists(SYSTEM_SOCKET) else LOCAL_SOCKET


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(
        prog="csnapctl", description="Administer csnapd snapshots through its control socket.",
        epilog="Control socket: --control, else $CSNAP_CONTROL, else "
               f"{SYSTEM_SOCKET} if it exists, else {LOCAL_SOCKET}. Only root and the user "
               "csnapd runs as may use it. Exit codes: 0 ok, 1 the server refused or did "
               "not answer in time, 2 usage, 3 cannot connect (the message says whether "
               "csnapd is running, and with which socket).")
    add_version_option(p)
    p.add_argument("--control", metavar="PATH", default=None,
                   help="control socket path (default: see below)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="seconds to wait for the server's answer (default 120)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = sub.add_parser("create", help="create a snapshot of the origin as of now, or a clone "
                                      "of a snapshot (--from)",
                       description="Create a snapshot of the origin as of now. It waits "
                                   "until every connected origin client has finished the "
                                   "writes it was already allowed to do. With --from, create "
                                   "a writable clone of that snapshot instead: it has the "
                                   "snapshot's content at once (the server shares the "
                                   "copies in the background: 'operations' in csnapctl "
                                   "status); the snapshot's writers finish their writes "
                                   "first.")
    c.add_argument("name", help="snapshot name (1..255 characters, not 'origin'; a name of "
                                "digits only can be given to other commands as a tag)")
    c.add_argument("--tag", type=int, default=None, metavar="N",
                   help="snapshot tag, a number that names it too (default: lowest free)")
    c.add_argument("--priority", type=int, default=None, metavar="P",
                   help="-128..127; lower priorities are squashed first when the store fills "
                        "(default 0)")
    c.add_argument("--from", dest="from_", default=None, metavar="SNAP",
                   help="make a clone of snapshot SNAP (name or tag) instead of a snapshot "
                        "of the origin; a clone's name has at most 92 bytes")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    d = sub.add_parser("delete", help="delete a snapshot (a string of digits means a tag)",
                       description="Delete a snapshot. It disappears at once; its chunks are "
                                   "freed in the background ('operations' in csnapctl "
                                   "status).")
    d.add_argument("snapshot", metavar="NAME|TAG",
                   help="the snapshot's name, or its tag (digits) as 'csnapctl list' shows; "
                        "digits that are only a snapshot's name mean that snapshot")
    d.add_argument("--json", action="store_true", help="print the result as JSON")
    st = sub.add_parser("set", help="rename a snapshot or change its priority",
                        description="Rename a snapshot (its tag stays) and/or change its "
                                    "priority, both in one step: if either is refused, "
                                    "neither happens. Clients already using the snapshot "
                                    "keep it; new ones need the new name or the tag.")
    st.add_argument("snapshot", metavar="NAME|TAG", help="the snapshot, as for delete")
    st.add_argument("--name", dest="new_name", default=None, metavar="NEW",
                    help="its new name (not all digits; not another snapshot's)")
    st.add_argument("--priority", type=int, default=None, metavar="P",
                    help="-128..127; lower priorities are squashed first when the store "
                         "fills")
    st.add_argument("--json", action="store_true", help="print the result as JSON")
    rv = sub.add_parser("revert", help="make the origin equal to a snapshot (others intact)",
                        description="Make the origin's content that of a snapshot, in the "
                                    "background ('operations' in csnapctl status). Every "
                                    "other snapshot keeps its content (it gets its copies "
                                    "first). Refused while origin clients are connected, and "
                                    "when the copies it may need do not fit; origin clients "
                                    "are refused until it is done; a restart resumes it.")
    rv.add_argument("snapshot", metavar="NAME|TAG", help="the snapshot, as for delete")
    rv.add_argument("--json", action="store_true", help="print the result as JSON")
    for name, text in (
            ("hold", "hold a snapshot: it cannot be deleted and is never squashed to free "
                     "space until released (holds count: each hold needs a release)"),
            ("release", "take one hold off a snapshot")):
        h = sub.add_parser(name, help=text.split(" (")[0],
                           description=text[0].upper() + text[1:] + ". Holds survive "
                           "restarts and crashes; 'csnapctl list' shows them (HOLDS).")
        h.add_argument("snapshot", metavar="NAME|TAG", help="the snapshot, as for delete")
        h.add_argument("--json", action="store_true", help="print the result as JSON")
    for name, text in (("list", "list snapshots (tag, name, time created, priority, holds)"),
                       ("status", "show store use, snapshots, clients, locks, operations")):
        s = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        s.add_argument("--json", action="store_true", help="print the result as JSON")
        if name == "list":
            s.add_argument("--tree", action="store_true",
                           help="show which snapshot each clone was made from, as a tree")
    sub.add_parser("shutdown", help="shut the server down gracefully",
                   description="Ask csnapd to stop: it finishes queued requests, commits, "
                               "marks the store clean and exits 0. Returns at once.")
    f = sub.add_parser(
        "forget-client", help="release the grants of a client whose host is down or fenced",
        description="A client that disconnected without letting go of its approvals keeps "
                    "them: every snapshot create copies out the chunks it may still write, "
                    "and a deleted snapshot it wrote keeps its space. Once its host can "
                    "never write again (powered off, storage access revoked), release them. "
                    "'csnapctl status' lists such clients under unproven_clients.")
    f.add_argument("client_id", type=int, metavar="CLIENT_ID",
                   help="the client id, as shown by 'csnapctl status'")
    f.add_argument("--json", action="store_true", help="print the result as JSON")
    csnapctl_grow.add_parser(sub)
    return p


def snapshot_ref(text: str) -> str | int:
    """A string of digits is a tag, anything else a name."""
    return int(text) if text.isdigit() else text


def _when(created: Any) -> str:
    if isinstance(created, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
    return "-"


def format_list(snaps: list[dict[str, Any]]) -> str:
    """A table of snapshots (extra keys shown when present)."""
    if not snaps:
        return "no snapshots"
    extra = sorted({k for s in snaps for k in s} - {"name", "tag", "created", "priority"})
    head = ["TAG", "NAME", "CREATED", "PRIO", *(k.upper() for k in extra)]
    rows = [[str(s.get("tag", "-")), str(s.get("name", "-")), _when(s.get("created")),
             str(s.get("priority", "-")), *(_cell(s.get(k)) for k in extra)]
            for s in sorted(snaps, key=lambda s: s.get("tag", 0))]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [head, *rows])


def format_tree(snaps: list[dict[str, Any]]) -> str:
    """Snapshots as a forest: snapshots of the origin at the roots, clones below the
    snapshot they were made from (by tag order at each level)."""
    if not snaps:
        return "no snapshots"
    names = {s.get("name") for s in snaps}
    kids: dict[Any, list[dict[str, Any]]] = {}
    for s in sorted(snaps, key=lambda s: s.get("tag", 0)):
        parent = s.get("parent") if s.get("parent") in names else None
        kids.setdefault(parent, []).append(s)
    lines = ["origin"]

    def label(s: dict[str, Any]) -> str:
        notes = [f"tag {s.get('tag')}", _when(s.get("created"))]
        if s.get("filling"):
            notes.append("filling")
        if s.get("squashed"):
            notes.append("squashed")
        if s.get("holds"):
            notes.append(f"{s['holds']} hold{'s' if s['holds'] != 1 else ''}")
        return f"{s.get('name')}  ({', '.join(notes)})"

    def walk(parent: Any, prefix: str) -> None:
        children = kids.get(parent, [])
        for i, s in enumerate(children):
            last = i == len(children) - 1
            lines.append(f"{prefix}{'`-- ' if last else '|-- '}{label(s)}")
            walk(s.get("name"), prefix + ("    " if last else "|   "))

    walk(None, "")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    """One value as a human reads it: yes/no for booleans, "-" for nothing."""
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, dict | list):
        return json.dumps(v, default=str)
    return str(v)


def summarize_status(st: dict[str, Any]) -> str:
    """Human view of STATUS: a summary of the well-known parts, then everything else.

    Known parts (csnapd's current keys): HA role, store use and journal, fill and time to
    full, per-snapshot exclusive/shared chunks and holds, clients, read locks, operations
    in progress. Unknown keys are still shown.
    """
    lines: list[str] = []
    ha = st.get("ha") if isinstance(st.get("ha"), dict) else None
    if ha is not None:
        lines.append(ha_line(ha))
    store = st.get("store") if isinstance(st.get("store"), dict) else {}
    cs = store.get("chunk_size")
    total, used = store.get("store_chunks"), store.get("used_chunks")
    if isinstance(cs, int) and isinstance(total, int) and isinstance(used, int) and total:
        lines.append(f"store:      {format_size(used * cs)} used of {format_size(total * cs)} "
                     f"({100 * used / total:.1f}%), {store.get('free_chunks', '?')} free "
                     f"chunks of {format_size(cs)}, {store.get('exceptions', '?')} exceptions")
    if "journal_used" in store:
        lines.append(f"journal:    {store['journal_used']}/{store.get('journal_blocks', '?')} "
                     f"blocks, seq {store.get('journal_seq', '?')}, "
                     f"{store.get('commits', '?')} commits")
    fill = st.get("fill") if isinstance(st.get("fill"), dict) else {}
    if fill:
        ttf = fill.get("time_to_full_s")
        when = ("not filling (no copy-outs lately)" if ttf is None
                else f"full in {_duration(ttf)} at {fill.get('copyout_rate')} copy-outs/s "
                     f"(the last {_duration(fill.get('rate_window_s') or 0)})")
        lines.append(f"fill:       {100 * fill.get('fill_ratio', 0):.1f}%, {when}")
    if store.get("failed"):
        lines.append(f"FAILED:     {store['failed']}")
    snaps = st.get("snapshots")
    if isinstance(snaps, list):
        lines.append("snapshots:" + ("" if snaps else " (none)"))
        counted = st.get("usage_counted", 1.0)
        if isinstance(counted, int | float) and counted < 1.0:
            lines.append(f"  (chunk counts cover {100 * counted:.0f}% of the store so far: "
                         "after a crash they are counted once, in the background)")
        rows = [{"tag": s.get("tag"), "name": s.get("name"), "created": _when(s.get("created")),
                 "exclusive": s.get("exclusive", s.get("unique")), "shared": s.get("shared"),
                 "priority": s.get("priority"), "holds": s.get("holds"),
                 "squashed": s.get("squashed")}
                for s in snaps if isinstance(s, dict)]
        if rows:
            lines.extend("  " + line for line in _table(rows).splitlines())
    for key in ("clients", "unproven_clients", "locks", "operations"):
        if key in st:
            lines.append(format_status({key: st[key]}))
    rest = {k: v for k, v in st.items() if k not in ("snapshots", "clients", "locks",
                                                      "operations", "unproven_clients",
                                                      "role", "fill", "usage_counted")}
    if isinstance(rest.get("store"), dict) and not rest["store"].get("failed"):
        # shown above as FAILED when set; an empty "failed:" line only puzzles
        rest["store"] = {k: v for k, v in rest["store"].items() if k != "failed"}
    if rest:
        lines.append("details:")
        lines.append(format_status(rest, 1))
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """Seconds as a human reads a span of time: 45 s, 12 min, 3.5 h, 9 days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def ha_line(ha: dict[str, Any]) -> str:
    """One line on this node's part in an HA pair: its role, who leads, the lease."""
    node = ha.get("node", "?")
    if ha.get("role") == "leader":
        text = (f"ha:         this node ({node}) LEADS under epoch {ha.get('epoch')}, lease "
                f"{ha.get('lease_left_s', 0):.1f}s left, {ha.get('takeovers', 0)} takeover(s)")
    elif ha.get("leader"):
        text = (f"ha:         this node ({node}) is a STANDBY; the leader is {ha['leader']} at "
                f"{ha.get('leader_address')} (epoch {ha.get('leader_epoch')}): run changes "
                "on that node")
    else:
        text = f"ha:         this node ({node}) is a STANDBY; no leader is elected yet"
    if ha.get("etcd_reachable") is False:
        text += "; etcd is NOT reachable"
    return text


def format_status(st: Any, indent: int = 0) -> str:
    """Status as an indented outline: sections for nested maps, tables for lists of maps.

    The server's keys are informational and may change, so every key is shown; sizes whose
    key ends in ``_bytes`` are also printed in human units.
    """
    pad = "  " * indent
    if not isinstance(st, dict):
        return pad + _cell(st)
    lines = []
    for key, value in st.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.append(format_status(value, indent + 1) if value else f"{pad}  (none)")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key}:")
            lines.extend(pad + "  " + line for line in _table(value).splitlines())
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: {', '.join(_cell(v) for v in value) or '(none)'}")
        elif key.endswith("_bytes") and isinstance(value, int):
            lines.append(f"{pad}{key}: {value} ({format_size(value)})")
        else:
            lines.append(f"{pad}{key}: {_cell(value)}")
    return "\n".join(lines)


def _table(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    cells = [[k.upper() for k in keys]] + [[_cell(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(keys))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


async def run(args: argparse.Namespace) -> Any:
    """Execute the parsed command; returns the server's result."""
    async with ControlClient(args.control, timeout=args.timeout) as ctl:
        if args.command == "create":
            parent = None if args.from_ is None else await resolve(ctl, args.from_)
            return await ctl.create(args.name, args.tag, args.priority, parent)
        if args.command == "delete":
            args.ref = await resolve(ctl, args.snapshot)
            return await ctl.delete(args.ref)
        if args.command == "list":
            return await ctl.list()
        if args.command == "status":
            return await ctl.status()
        if args.command == "forget-client":
            return await ctl.forget_client(args.client_id)
        if args.command == "grow":
            return await csnapctl_grow.run(ctl, args)
        if args.command == "revert":
            args.ref = await resolve(ctl, args.snapshot)
            return await ctl.revert(args.ref)
        if args.command in ("hold", "release", "set"):
            args.ref = await resolve(ctl, args.snapshot)
            if args.command == "hold":
                return await ctl.hold(args.ref)
            if args.command == "release":
                return await ctl.release(args.ref)
            return await ctl.set(args.ref, args.new_name, args.priority)
        return await ctl.shutdown()


class AmbiguousSnapshot(Exception):
    """A string of digits that is one snapshot's name and another snapshot's tag."""


async def resolve(ctl: ControlClient, text: str) -> str | int:
    """The snapshot ``text`` means: digits are a tag, unless only a snapshot's *name*.

    Snapshots named by date ("20261202") are common; deleting one by its name must not
    need a second thought, nor reach a snapshot whose tag happens to be that number.
    """
    ref = snapshot_ref(text)
    if isinstance(ref, str):
        return ref
    snaps = await ctl.list()
    by_name = any(s.get("name") == text for s in snaps)
    by_tag = any(s.get("tag") == ref for s in snaps)
    if by_name and by_tag:
        raise AmbiguousSnapshot(f"{text!r} is one snapshot's name and another's tag: give "
                                f"the tag of the one named {text!r}, or the name of the one "
                                f"with tag {ref} ('csnapctl list' shows both)")
    return text if by_name else ref


def render(args: argparse.Namespace, result: Any) -> str:
    """Human (or --json) text for a command's result."""
    if getattr(args, "json", False):
        return json.dumps(result, indent=2, sort_keys=True, default=str)
    if args.command == "create":
        if result.get("parent"):
            return (f"created clone {result.get('name')!r} tag {result.get('tag')} of "
                    f"{result.get('parent')!r} at {_when(result.get('created'))}")
        return (f"created snapshot {result.get('name')!r} tag {result.get('tag')} "
                f"at {_when(result.get('created'))}")
    if args.command == "revert":
        return (f"reverting the origin to snapshot {result.get('reverting_to')!r} (tag "
                f"{result.get('tag')}) in the background; 'csnapctl status' shows progress")
    if args.command == "delete":
        ref = getattr(args, "ref", snapshot_ref(args.snapshot))
        which = f"tag {ref}" if isinstance(ref, int) else repr(ref)
        return f"deleted snapshot {which}; its chunks are freed in the background"
    if args.command == "list":
        if getattr(args, "tree", False):
            return format_tree(result or [])
        return format_list(result or [])
    if args.command == "status":
        return summarize_status(result) if isinstance(result, dict) else format_status(result)
    if args.command in ("hold", "release"):
        n = result.get("holds", 0)
        return (f"snapshot {result.get('name')!r} (tag {result.get('tag')}) "
                f"{'held' if args.command == 'hold' else 'released'}: {n} hold"
                f"{'' if n == 1 else 's'} now"
                + (" (it can be deleted and squashed again)" if not n else ""))
    if args.command == "set":
        return (f"snapshot tag {result.get('tag')}: name {result.get('name')!r}, "
                f"priority {result.get('priority')}")
    if args.command == "grow":
        return csnapctl_grow.render(result)
    if args.command == "forget-client":
        if result.get("forgotten"):
            return f"released the grants of client {args.client_id}"
        return f"client {args.client_id} held no grants"
    return "csnapd is shutting down (it commits, marks the store clean and exits)"


def remote_hint(exc: RemoteError) -> str:
    """What to do about a refusal, appended to the server's message (or "")."""
    if isinstance(exc, UnknownSnapshotError):
        return "; 'csnapctl list' shows the snapshots"
    if isinstance(exc, SnapshotHeldError):
        return "; 'csnapctl list' shows the holds (HOLDS)"
    if isinstance(exc, SnapshotExistsError):
        return "; choose another name (or --tag), or delete the old one first"
    if isinstance(exc, PermissionDeniedError):
        return "; only root and the user csnapd runs as may change snapshots or stop it"
    if getattr(exc, "code", None) == ErrorCode.NOT_LEADER:
        return "; run csnapctl on the leader's host (its control socket), which leads now"
    return ""


def connect_problem(path: str, exc: OSError,
                    servers: list[RunningServer] | None = None) -> str:
    """Why the control socket ``path`` cannot be reached, and whether csnapd is running.

    ``servers`` are the csnapd processes visible here (looked up when None), so the
    message can point at the socket a running csnapd really has.
    """
    if servers is None:
        servers = running_servers()
    head = f"cannot connect to control socket {path}"
    mine = [s for s in servers if s.control_path() and _same_path(s.control_path(), path)]
    if isinstance(exc, PermissionError) or exc.errno == errno.EACCES:
        owner = _owner(path)
        return (f"{head}: permission denied: only root and the user csnapd runs as"
                f"{f' ({owner})' if owner else ''} may use it; run csnapctl as one of them "
                "(e.g. with sudo)")
    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
        why = "no such socket"
    elif isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        why = "nothing listens on it (a socket left by a csnapd that did not stop cleanly)"
    else:
        why = exc.strerror or str(exc)
    if mine:
        return f"{head}: {why}; {mine[0].describe()} has it but does not answer"
    hint = servers_hint(servers)
    sockets = [c for c in (s.control_path() for s in servers) if c]
    if len(sockets) == 1:
        hint += f"; give its socket with --control {sockets[0]} (or set CSNAP_CONTROL)"
    elif sockets:
        hint += "; give the right one's socket with --control (or set CSNAP_CONTROL)"
    return f"{head}: {why}; {hint}"


def _same_path(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _owner(path: str) -> str:
    try:
        return pwd.getpwuid(os.stat(path).st_uid).pw_name
    except (OSError, KeyError):
        return ""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``csnapctl`` console script."""
    return run_main(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    csnapctl_grow.check(args, parser)
    if args.control is None:
        args.control = default_control()
    if args.command in ("create", "set") and args.priority is not None \
            and not -128 <= args.priority <= 127:
        print("csnapctl: --priority must be within -128..127", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "set" and args.new_name is None and args.priority is None:
        print("csnapctl: set needs --name NEW and/or --priority P", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "create" and args.name.isdigit():
        print(f"csnapctl: note: {args.name!r} is all digits: csnapctl delete finds it by "
              "name, but csnap-io --volume and csnap-nbd take digits as a tag (use its tag "
              "there)", file=sys.stderr)
    try:
        result = asyncio.run(run(args))
    except AmbiguousSnapshot as exc:
        print(f"csnapctl: {args.command} refused: {exc}", file=sys.stderr)
        return EXIT_SERVER
    except RemoteError as exc:
        print(f"csnapctl: {args.command} failed: {exc}{remote_hint(exc)}", file=sys.stderr)
        return EXIT_SERVER
    except ProtocolError as exc:
        print(f"csnapctl: protocol error from server: {exc}", file=sys.stderr)
        return EXIT_SERVER
    except TimeoutError:
        print(f"csnapctl: no answer from csnapd on {args.control} within {args.timeout:g} s "
              "(a create waits for every origin client; --timeout waits longer)",
              file=sys.stderr)
        return EXIT_SERVER
    except ConnectionError as exc:
        if not isinstance(exc, ConnectionRefusedError):
            print(f"csnapctl: csnapd closed the control connection before answering: {exc} "
                  "(it may be shutting down; 'csnapctl status' tells)", file=sys.stderr)
            return EXIT_SERVER
        print(f"csnapctl: {connect_problem(args.control, exc)}", file=sys.stderr)
        return EXIT_CONNECT
    except OSError as exc:
        print(f"csnapctl: {connect_problem(args.control, exc)}", file=sys.stderr)
        return EXIT_CONNECT
    print(render(args, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
