"""Fuzz a live csnapd's data and control sockets with Hypothesis-generated hostile input.

Usage (long runs, outside CI; starts its own csnapd on temporary sparse files)::

    .venv/bin/python -m csnap_soak.fuzz --examples 20000 [--seed N] [--dir DIR]

or against a server you started yourself (it must have a snapshot named ``fz`` and you
must not mind what the fuzzer does to it)::

    .venv/bin/python -m csnap_soak.fuzz --examples 5000 --port 4270 --control data/csnapd.sock

One *example* opens one connection (TCP data socket, unidentified or identified for the
origin or the snapshot ``fz``, or the unix control socket) and sends 1-6 *inputs*: random
bytes, frames whose payload is not a map / not msgpack / uses ext types or invalid UTF-8,
zero / oversized / 4 GiB declared lengths, truncated frames, and well-framed messages of
every op (plus unknown ops and the server's own reply ops) whose fields are mutated: wrong
types, missing and extra fields, huge and negative integers, chunk numbers past the end of
the volume, thousands of ranges, unsorted or overlapping ranges, 2^64-sized counts.
``SHUTDOWN`` is never sent (it is a legitimate request that stops the server).

Checked after every example:
  * csnapd is still running (``server deaths`` counts the times it was not);
  * every byte the server sent back decodes as frames of valid server messages;
  * if every input was a well-formed frame, the connection is still usable: a final PING
    (control socket: LIST_SNAPSHOTS) is answered (protocol rule: only framing errors close a
    connection; a SNAPSHOT_SQUASHED notice is the one legitimate exception);
  * a sentinel client on another connection keeps getting PONGs (it also acknowledges
    snapshot advices, so fuzzed CREATE_SNAPSHOTs complete).

Prints ``fuzz inputs tried: N, server deaths: D`` (N counts inputs, i.e. frames or raw
byte strings sent) and exits non-zero on any failure; Hypothesis shrinks a failing
example and prints it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hseed
from hypothesis import strategies as st

from csnap_client.protocol import (
    CATALOGUE,
    CLIENT_REQUESTS,
    CONTROL_REPLIES,
    CONTROL_REQUESTS,
    SERVER_MESSAGES,
    BadRequest,
    ErrorCode,
    Framer,
    encode,
    validate,
)
from csnap_client.protocol import messages as m

BIN = Path(sys.executable).parent
SENTINEL_ID = (1 << 63) + 4242
SNAPSHOT = "fz"
U64 = (1 << 64) - 1

# ------------------------------------------------------------------ strategies

HOSTILE_INTS = [0, 1, -1, 2, 255, 256, 1023, 1024, 1025, 65535, 65536, 65537, 2**31 - 1,
                2**31, 2**32 - 1, 2**32, 2**53, 2**63 - 1, 2**63, U64, -(2**63), -(2**31)]
ints = st.one_of(st.sampled_from(HOSTILE_INTS), st.integers(-(2**63), U64),
                 st.integers(0, 2048))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=True),
                    st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
chunk_nums = st.one_of(st.integers(0, 1100), st.sampled_from(HOSTILE_INTS))
pair = st.one_of(st.tuples(chunk_nums, chunk_nums).map(list),
                 st.lists(chunk_nums, max_size=4), values)
ranges = st.one_of(
    st.lists(st.tuples(st.integers(0, 1023), st.integers(1, 8)).map(list), min_size=1,
             max_size=4),  # mostly valid
    st.lists(pair, max_size=8),
    st.builds(lambda n, start, step: [[start + i * step, 1] for i in range(n)],
              st.sampled_from([1023, 1024, 1025, 3000]), st.integers(0, 4), st.integers(0, 3)),
    st.sampled_from([[[0, 2**64]], [[2**64 - 1, 1]], [[0, 65536]], [[0, 65537]], [[0, 0]],
                     [[5, 1], [2, 1]], [[0, 4], [2, 4]], [[-1, 1]], [], [[1024, 1]]]),
    values)
FIELD_VALUES = {
    "id": st.one_of(st.integers(1, 2**20), st.sampled_from([0, -1, U64, 2**64 - 2]), values),
    "ranges": ranges, "lock": st.one_of(st.integers(0, 50), ints, values),
    "advice": st.one_of(st.integers(0, 10), values),
    "client_id": st.one_of(st.integers(0, 2**62), values),
    "volume": st.one_of(st.sampled_from(["origin", SNAPSHOT, "nope", "", 0, 1, U64]), values),
    "version": st.one_of(st.sampled_from([1, 0, 2, U64]), values),
    "name": st.one_of(st.text(min_size=1, max_size=8), st.sampled_from(["origin", "", "x" * 256]),
                      values),
    "snapshot": st.one_of(st.sampled_from([SNAPSHOT, "nope", 0, 1, U64]), values),
    "tag": st.one_of(st.integers(0, 70), ints, values),
    "priority": st.one_of(st.integers(-128, 127), ints, values),
}
SENDABLE = sorted((CLIENT_REQUESTS | CONTROL_REQUESTS) - {"SHUTDOWN"})
OPS = st.one_of(st.sampled_from(SENDABLE), st.sampled_from(sorted(SERVER_MESSAGES)),
                st.sampled_from(["", "ping", "NOPE", "SHUTDOWN\x00"]), values)


@st.composite
def messages(draw: Any) -> dict[Any, Any]:
    op = draw(OPS)
    spec = CATALOGUE.get(op) if isinstance(op, str) else None
    msg: dict[Any, Any] = {"op": op} if draw(st.integers(0, 15)) else {}
    for name in sorted(spec.fields - {"op"}) if spec else ["id"]:
        if draw(st.integers(0, 7)):  # sometimes missing
            msg[name] = draw(FIELD_VALUES.get(name, values))
    if not draw(st.integers(0, 5)):
        msg[draw(st.text(max_size=6))] = draw(values)
    if msg.get("client_id") == SENTINEL_ID:
        msg["client_id"] = 7
    return msg


VALID: dict[str, dict[str, Any]] = {
    "PING": {}, "LIST_VOLUMES": {}, "DETACH": {}, "LIST_SNAPSHOTS": {},
    "STATUS": {}, "QUERY_WRITE": {"ranges": [[0, 4]]}, "QUERY_SNAPSHOT_READ": {"ranges": [[0, 4]]},
    "QUERY_MAP": {"ranges": [[0, 4]]}, "FINISH_SNAPSHOT_READ": {"lock": 1},
    "FORGET_CLIENT": {"client_id": 12345}, "ACK_ADVICE": {"advice": 1},
    "CREATE_SNAPSHOT": {"name": "c"}, "DELETE_SNAPSHOT": {"snapshot": "nope"},
    "IDENTIFY": {"client_id": 9, "volume": "origin", "version": 2},
}


@st.composite
def near_valid(draw: Any) -> dict[str, Any]:
    """A valid request of a random op with at most one field replaced by a hostile value."""
    op = draw(st.sampled_from(sorted(VALID)))
    msg = {"op": op, "id": draw(st.integers(1, 2**20)), **VALID[op]}
    if op == "CREATE_SNAPSHOT":
        msg["name"] = draw(st.text("abc", min_size=1, max_size=3))
    fields = sorted(CATALOGUE[op].fields - {"op"})
    if fields and draw(st.integers(0, 3)):
        name = draw(st.sampled_from(fields))
        msg[name] = draw(FIELD_VALUES.get(name, values))
    if msg.get("client_id") == SENTINEL_ID:
        msg["client_id"] = 7
    return msg


GOOD, BAD = "good", "bad"  # a well-formed frame, or input that may close the connection


def _frame(payload: bytes, length: int | None = None) -> bytes:
    return struct.pack(">I", len(payload) if length is None else length) + payload


def _pack(value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):  # e.g. 2**64: send its repr (not a map)
        return msgpack.packb(repr(value), use_bin_type=True)


def _message_frame(msg: dict[Any, Any]) -> tuple[str, bytes]:
    """A frame for ``msg``; GOOD only if the payload really is the msgpack map."""
    try:
        return GOOD, _frame(msgpack.packb(msg, use_bin_type=True))
    except (TypeError, ValueError, OverflowError):
        return BAD, _frame(_pack(msg))


good_inputs = st.one_of(near_valid().map(_message_frame), near_valid().map(_message_frame),
                        messages().map(_message_frame))
inputs = st.one_of(
    good_inputs,
    st.binary(max_size=64).map(lambda b: (BAD, b)),
    values.map(lambda v: (BAD, _frame(_pack(v)))),  # payload that may not be a map
    st.sampled_from([  # hand-made framing errors
        _frame(b""), _frame(b"\xc1"), _frame(b"\x81\xa2op"), _frame(b"\x81\xa2op\xa4PINGxx"),
        _frame(b"\x81\xa2op\xc7\x01\x05z"),  # ext type
        _frame(b"\x81\xa2op\xa2\xff\xfe"),  # invalid UTF-8
        _frame(b"\x81\x01\x02"),  # int map key
        struct.pack(">I", 0xFFFFFFFF) + b"\x80",  # 4 GiB declared
        struct.pack(">I", (1 << 20) + 1) + b"\x80",
        struct.pack(">I", 1 << 20),  # header only, body never comes
        b"\x00\x00",  # truncated header
    ]).map(lambda b: (BAD, b)),
    st.builds(lambda msg, cut: (BAD, _frame(_pack(msg))[:cut]), messages(),
              st.integers(1, 12)),  # truncated frame
)
CONN_KINDS = ["raw", "origin", "snapshot", "control", "bad-identify"]


@st.composite
def cases(draw: Any) -> tuple[str, list[tuple[str, bytes]]]:
    kind = draw(st.sampled_from(CONN_KINDS))
    clean = draw(st.booleans())  # half the examples keep the stream well framed
    return kind, draw(st.lists(good_inputs if clean else inputs, min_size=1, max_size=6))


# ------------------------------------------------------------------ clients


class Blocking:
    """A tiny blocking protocol client (acknowledges ADVICE while waiting)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.framer, self.next_id = sock, Framer(max_frame_size=2 << 20), 1
        self.backlog: list[dict[str, Any]] = []

    def call(self, msg: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        rid = msg["id"] = self.next_id
        self.next_id += 1
        self.sock.sendall(encode(msg))
        deadline = time.monotonic() + timeout
        while True:
            for got in self.backlog:
                if got.get("id") == rid:
                    self.backlog.remove(got)
                    return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to {msg['op']}")
            self.sock.settimeout(left)
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("closed by the server")
            for got in self.framer.feed_many(data):
                if got["op"] == "ADVICE":
                    self.sock.sendall(encode(m.ack_advice(self.next_id, got["advice"])))
                    self.next_id += 1
                elif got.get("id"):
                    self.backlog.append(got)


class Sentinel(threading.Thread):
    """An origin client on its own connection that PINGs in a loop."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.client = Blocking(sock)
        reply = self.client.call(m.identify(0, SENTINEL_ID, "origin"))
        assert reply["op"] == "IDENTIFY_OK", reply
        self.pongs = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                assert self.client.call(m.ping(0))["op"] == "PONG"
                self.pongs += 1
                time.sleep(0.003)
        except BaseException as exc:  # noqa: BLE001 - reported by the checker
            self.error = exc

    def check(self, timeout: float = 10.0) -> None:
        """Wait until at least one more PONG arrives."""
        seen, deadline = self.pongs, time.monotonic() + timeout
        while self.pongs <= seen + 1:
            if self.error is not None:
                raise AssertionError(f"sentinel client failed: {self.error!r}")
            if time.monotonic() > deadline:
                raise AssertionError("sentinel client got no PONG for 10 s")
            time.sleep(0.001)


@dataclass
class Target:
    """A running csnapd to fuzz."""

    port: int
    control: str
    proc: subprocess.Popen | None = None
    sentinel: Sentinel | None = None
    inputs: int = 0
    examples: int = 0
    deaths: int = 0
    replies: dict[str, int] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def start_sentinel(self) -> None:
        self.sentinel = Sentinel(self.port)
        self.sentinel.start()

    def figure(self) -> str:
        return f"fuzz inputs tried: {self.inputs}, server deaths: {self.deaths}"


def _open(target: Target, kind: str) -> socket.socket:
    if kind == "control":
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(target.control)
        return sock
    sock = socket.create_connection(("127.0.0.1", target.port), timeout=10)
    if kind in ("origin", "snapshot"):
        volume = "origin" if kind == "origin" else SNAPSHOT
        reply = Blocking(sock).call(m.identify(0, int.from_bytes(os.urandom(7), "big"), volume))
        if reply["op"] != "IDENTIFY_OK":  # the fuzzer may have deleted or squashed fz
            assert kind == "snapshot" and reply["op"] == "ERROR", reply
    elif kind == "bad-identify":
        sock.sendall(encode(m.identify(1, 5, "origin", version=99)))
    return sock


def run_case(target: Target, kind: str, frames: list[tuple[str, bytes]]) -> None:
    """Send one example and check the server's behaviour (raises AssertionError)."""
    target.examples += 1
    sock = _open(target, kind)
    framer = Framer(max_frame_size=2 << 20)
    accept = CONTROL_REPLIES if kind == "control" else SERVER_MESSAGES
    got: list[dict[str, Any]] = []
    closed = False
    try:
        for _, data in frames:
            target.inputs += 1
            try:
                sock.sendall(data)
            except OSError:
                closed = True
                break
        aligned = all(k == GOOD for k, _ in frames)
        if aligned and not closed:
            # the connection must still work: an id no fuzzed request used
            probe = m.list_snapshots(U64) if kind == "control" else m.ping(U64)
            try:
                sock.sendall(encode(probe))
            except OSError:
                pass  # closed: the recv below reports it
            deadline = time.monotonic() + 15
            while not any(g.get("id") == U64 for g in got):
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data = sock.recv(1 << 16)
                except TimeoutError:
                    raise AssertionError(f"no answer to the probe after {kind} "
                                         f"{frames!r:.300}") from None
                except OSError:
                    data = b""
                if not data:
                    squashed = any(g["op"] == "ERROR" and g["id"] == 0 and g["code"] in (
                        ErrorCode.SNAPSHOT_SQUASHED, ErrorCode.SNAPSHOT_DELETED)
                        for g in got)
                    assert squashed, f"server closed a connection without a framing error: " \
                        f"{kind} {frames!r:.300} -> {got!r:.300}"
                    break
                got += _decode(framer, data, accept)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        deadline = time.monotonic() + 15
        while True:  # read until the server closes (it must, on EOF)
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                raise AssertionError("server did not close after EOF") from None
            except OSError:
                break
            if not data:
                break
            got += _decode(framer, data, accept)
    finally:
        sock.close()
    for g in got:
        target.replies[g.get("code", g["op"])] = target.replies.get(g.get("code", g["op"]), 0) + 1
    if not target.alive():
        target.deaths += 1
        raise AssertionError(f"csnapd died (exit {target.proc.returncode}) after "
                             f"{kind} {frames!r:.500}")
    if target.sentinel is not None:
        target.sentinel.check()


def _decode(framer: Framer, data: bytes, accept: frozenset[str]) -> list[dict[str, Any]]:
    msgs = framer.feed_many(data)  # a FramingError here is a server bug: let it raise
    for msg in msgs:
        try:
            validate(msg, accept)
        except BadRequest as exc:
            raise AssertionError(f"invalid message from the server: {msg!r:.300}: {exc}") \
                from None
    return msgs


def fuzz(target: Target, examples: int, seed: int | None = 0) -> None:
    """Run ``examples`` Hypothesis examples against ``target`` (deterministic for a seed)."""

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink],
              print_blob=False)
    @given(case=cases())
    def prop(case: tuple[str, list[tuple[str, bytes]]]) -> None:
        run_case(target, *case)

    if seed is not None:
        prop = hseed(seed)(prop)
    prop()


# ------------------------------------------------------------------ own server


def start_server(tmp: Path, *extra: str) -> Target:
    """csnap-init + csnapd on sparse files in ``tmp``, with the snapshot ``fz``."""
    origin, store, control = tmp / "origin.img", tmp / "store.img", tmp / "csnapd.sock"
    with open(origin, "wb") as f:
        f.truncate(4 << 20)
    with open(store, "wb") as f:
        f.truncate(256 << 20)
    subprocess.run([str(BIN / "csnap-init"), "--store", str(store), "--origin", str(origin),
                    "--chunk-size", "4K", "--quiet"], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp / "csnapd.log", "a")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen([str(BIN / "csnapd"), "--store", str(store), "--origin",
                             str(origin), "--listen", f"127.0.0.1:{port}", "--control",
                             str(control), "--lease", "2", *extra], stdout=log, stderr=log)
    target = Target(port, str(control), proc)
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, (tmp / "csnapd.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            with socket.socket(socket.AF_UNIX) as u:
                u.connect(str(control))
            break
        except OSError:
            assert time.monotonic() < deadline, "csnapd did not start"
            time.sleep(0.02)
    ctl = Blocking(_open(target, "control"))
    assert ctl.call(m.create_snapshot(0, SNAPSHOT))["op"] == "OK"
    ctl.sock.close()
    return target


def stop_server(target: Target, tmp: Path) -> int:
    """SIGTERM, then csnap-check; returns the check's exit code (raises if csnapd failed)."""
    if target.sentinel is not None:
        target.sentinel.stop.set()
        target.sentinel.join(10)
    assert target.proc is not None
    target.proc.send_signal(signal.SIGTERM)
    code = target.proc.wait(60)
    assert code == 0, f"csnapd exit {code}: {(tmp / 'csnapd.log').read_text()[-3000:]}"
    check = subprocess.run([str(BIN / "csnap-check"), "--store", str(tmp / "store.img"),
                            "--origin", str(tmp / "origin.img")], capture_output=True, text=True)
    if check.returncode:
        print(check.stdout, check.stderr)
    return check.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default random)")
    p.add_argument("--port", type=int, help="fuzz a running server instead of starting one")
    p.add_argument("--control", help="its control socket (with --port)")
    p.add_argument("--dir", help="work directory for the server started here")
    args = p.parse_args(argv)
    start = time.monotonic()
    if args.port:
        target = Target(args.port, args.control)
        target.start_sentinel()
        tmp = None
    else:
        tmp = Path(args.dir or tempfile.mkdtemp(prefix="csnap-fuzz-"))
        tmp.mkdir(parents=True, exist_ok=True)
        target = start_server(tmp)
        target.start_sentinel()
    failed = False
    try:
        fuzz(target, args.examples, args.seed)
    except Exception as exc:  # noqa: BLE001 - Hypothesis already printed the example
        print(f"FAILED: {exc}")
        failed = True
    rc = 0
    if tmp is not None and target.alive():
        rc = stop_server(target, tmp)
        print(f"csnap-check exit: {rc} (store in {tmp})")
    print(f"examples: {target.examples}, replies by op/code: {dict(sorted(target.replies.items(), key=str))}, "
          f"{time.monotonic() - start:.0f} s")
    print(target.figure())
    return 1 if failed or rc or target.deaths else 0


if __name__ == "__main__":
    sys.exit(main())
