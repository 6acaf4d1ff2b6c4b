"""Failover between csnapd nodes (issue 12, client side), against the fake server's nodes.

The fake's first node leads unless told otherwise; ``add_node`` adds standbys that answer
NOT_LEADER naming the leader, ``set_leader`` moves the lead (a new epoch, no read locks).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time

import pytest

import csnap_client
from csnap_client.addresses import (
    format_address,
    parse_address,
    parse_address_list,
    unique_addresses,
)
from csnap_client.client import QUICK_LOSS_LIMIT, NoLeaderError, ReconnectFailedError
from csnap_client.protocol import NotLeaderError
from csnap_nbd import cli as nbd_cli
from csnap_nbd import protocol as nbd
from csnap_nbd.exports import ExportError, Gateway
from csnap_nbd.server import NbdServer
from tests.nbd.test_wire import Wire
from tools import csnap_io

from .conftest import CS, count, pattern, read_file

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def at(port: int) -> str:
    return f"{HOST}:{port}"


async def wait_until(pred, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


def ops_on(fake, port: int, op: str) -> int:
    """How many ``op`` requests reached the node on ``port``."""
    return sum(1 for _, p, o in fake.arrivals if p == port and o == op)


@pytest.fixture
async def volumes(devices):
    """``await volumes(port, volume, **kw)`` -> an open Volume, closed at teardown."""
    opened = []

    async def _open(port: int, volume: str = "origin", **kw):
        kw.setdefault("reconnect_delay", 0.02)
        kw.setdefault("reconnect_max_delay", 0.2)
        vol = await csnap_client.connect(HOST, port, volume=volume, origin=devices[0],
                                         store=devices[1], **kw)
        opened.append(vol)
        return vol

    yield _open
    for vol in opened:
        await vol.close()


# ---------------------------------------------------------------- addresses


def test_addresses_parse_ipv6_lists_and_drop_duplicates():
    assert parse_address("[::1]:4270") == ("::1", 4270)
    assert parse_address("db1.example:4270") == ("db1.example", 4270)
    assert parse_address("::1:4270") == ("::1", 4270)  # the tools' old reading, kept
    assert format_address(("::1", 4270)) == "[::1]:4270"
    assert format_address(("10.0.0.1", 1)) == "10.0.0.1:1"
    assert parse_address_list("a:1, [::1]:2,a:1,") == [("a", 1), ("::1", 2)]
    assert unique_addresses([("a", 1), "a:1", "b:2"]) == [("a", 1), ("b", 2)]
    for bad in ("a", "a:", ":1", "a:0", "a:65536", "[::1]", "[::1:2", "a:b"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad, "--server")
    with pytest.raises(ValueError, match="comma list"):
        parse_address_list(" , ")


# ---------------------------------------------------------------- finding the leader


async def test_first_connect_to_a_standby_follows_the_leader_hint(fake, volumes, devices):
    """Only the standby's address is given: its NOT_LEADER names the leader, which is
    tried next and learned as an address."""
    leader = await fake.add_node()
    fake.set_leader(leader)
    vol = await volumes(fake.port)
    assert vol.client.address == at(leader)
    assert vol.client.servers == [(HOST, fake.port), (HOST, leader)]
    assert [(p, o) for _, p, o in fake.arrivals] == [(fake.port, "IDENTIFY"),
                                                     (leader, "IDENTIFY")]
    await vol.write(0, b"x" * CS)
    assert read_file(devices[0], 0, CS) == b"x" * CS
    assert ops_on(fake, leader, "QUERY_WRITE") == 1


async def test_connection_refused_on_the_first_address_rotates(fake, volumes):
    dead = free_port()
    vol = await volumes(dead, servers=[at(fake.port)])
    assert vol.client.address == at(fake.port)
    await vol.write(0, b"y")


async def test_no_address_answering_fails_the_first_connect_naming_each(fake, devices):
    standby = await fake.add_node()
    fake.set_leader(None)
    dead = free_port()
    with pytest.raises(NoLeaderError) as info:
        await csnap_client.connect(HOST, dead, origin=devices[0],
                                   servers=[at(standby), at(fake.port)])
    text = str(info.value)
    assert f"{at(dead)}: connection refused" in text
    assert f"{at(standby)}: not the leader" in text and "no leader is elected" in text
    assert [a for a, _ in info.value.errors] == [(HOST, dead), (HOST, standby),
                                                 (HOST, fake.port)]


# ---------------------------------------------------------------- demoted mid-session


@pytest.mark.parametrize("how", ["reply", "close", "notice"])
async def test_a_demoted_leader_hands_pending_writes_and_reads_to_the_new_one(
        fake, volumes, devices, how):
    """Writes waiting for their QUERY_WRITE and a snapshot read holding its read lock
    when the leader is demoted: both complete on the new leader, no error surfaces. The
    lock does not move (no protocol can carry it safely): the FINISH resent to the new
    leader is answered UNKNOWN_LOCK and the read is done again there."""
    new = await fake.add_node()
    await fake.create_snapshot("s")
    origin = await volumes(fake.port, servers=[at(new)])
    snap = await volumes(fake.port, "s", servers=[at(new)])
    fake.delay["FINISH_SNAPSHOT_READ"] = 0.3
    read = asyncio.ensure_future(snap.read(2 * CS, 2 * CS))
    await wait_until(lambda: count(fake, "FINISH_SNAPSHOT_READ") == 1)  # lock held
    fake.delay["QUERY_WRITE"] = 0.3
    data = {c: bytes([c]) * (CS - 7) for c in (10, 11, 12)}
    writes = [asyncio.ensure_future(origin.write(c * CS + 7, d)) for c, d in data.items()]
    await wait_until(lambda: count(fake, "QUERY_WRITE") == 3)
    epoch = origin.client.info.server_epoch
    fake.set_leader(new, close=how == "close", notice=how == "notice")
    await asyncio.sleep(0.05)
    fake.delay.clear()
    await asyncio.wait_for(asyncio.gather(*writes), 10)
    assert await asyncio.wait_for(read, 10) == pattern(2) + pattern(3)
    for c, d in data.items():
        assert read_file(devices[0], c * CS + 7, len(d)) == d
        assert await snap.read(c * CS, CS) == pattern(c)  # copied out before the write
    for vol in (origin, snap):
        assert vol.client.address == at(new)
        assert vol.client.failovers == 1 and vol.client.reconnects == 1
        assert vol.client.info.server_epoch == epoch + 1
    assert ops_on(fake, new, "QUERY_WRITE") >= 3  # resent, same ids
    assert ops_on(fake, new, "FINISH_SNAPSHOT_READ") >= 1
    assert ops_on(fake, new, "QUERY_SNAPSHOT_READ") >= 1  # read again under a new lock


async def test_not_leader_bounces_are_not_poison_requests(fake, volumes, devices):
    """A leader that keeps answering NOT_LEADER right after each reconnect, more times
    than the quick-loss limit, then settles: the write goes through."""
    vol = await volumes(fake.port, reconnect_max_delay=0.05)
    fake.bounce = QUICK_LOSS_LIMIT + 3
    await asyncio.wait_for(vol.write(0, b"z" * CS), 10)
    assert read_file(devices[0], 0, CS) == b"z" * CS
    assert vol.client.reconnects == QUICK_LOSS_LIMIT + 3
    assert vol.client.address == at(fake.port)


async def test_a_failover_taking_a_while_is_a_pause(fake, volumes, devices):
    """No leader for a second (every round fails: back off between rounds), then one:
    the pending write completes; each round tried every node once."""
    new = await fake.add_node()
    vol = await volumes(fake.port, servers=[at(new)], reconnect_delay=0.05,
                        reconnect_timeout=10)
    fake.set_leader(None)
    t0 = time.monotonic()
    write = asyncio.ensure_future(vol.write(5 * CS, b"w" * CS))
    await asyncio.sleep(1.0)
    fake.set_leader(new)
    await asyncio.wait_for(write, 10)
    assert read_file(devices[0], 5 * CS, CS) == b"w" * CS
    idents = [(t, p) for t, p, o in fake.arrivals if o == "IDENTIFY" and t > t0]
    rounds = [idents[i:i + 2] for i in range(0, len(idents) - 1, 2)]
    assert 3 <= len(rounds) <= 12, idents  # backed off: not a tight loop
    assert all({p for _, p in r} == {fake.port, new} for r in rounds[:-1])
    gaps = [b[0][0] - a[-1][0] for a, b in zip(rounds, rounds[1:], strict=False)]
    assert all(g >= 0.04 for g in gaps), gaps


async def test_no_leader_past_the_reconnect_deadline_fails_with_a_clear_error(
        fake, volumes):
    new = await fake.add_node()
    vol = await volumes(fake.port, servers=[at(new)], reconnect_delay=0.05,
                        reconnect_timeout=1.0)
    fake.set_leader(None)
    t0 = time.monotonic()
    with pytest.raises(ReconnectFailedError) as info:
        await asyncio.wait_for(vol.write(0, b"q" * CS), 10)
    assert 1.0 <= time.monotonic() - t0 < 5
    text = str(info.value)
    assert "no csnapd leader reachable for 1.0 s" in text
    assert at(fake.port) in text and at(new) in text and "not the leader" in text
    with pytest.raises(ReconnectFailedError):
        await vol.write(0, b"q")


async def test_a_node_that_never_stops_bouncing_hits_the_deadline(fake, volumes):
    """Sessions that open and are refused at once do not reset the deadline."""
    vol = await volumes(fake.port, reconnect_timeout=1.0, reconnect_max_delay=0.1)
    fake.bounce = 10 ** 6
    with pytest.raises(ReconnectFailedError, match="unreachable for 1.0 s"):
        await asyncio.wait_for(vol.write(0, b"b" * CS), 10)


async def test_a_hint_to_an_unknown_node_mid_session_is_followed_and_learned(
        fake, volumes):
    new = await fake.add_node()
    vol = await volumes(fake.port)  # knows one address only
    fake.set_leader(new)
    await asyncio.wait_for(vol.write(0, b"h" * CS), 10)
    assert vol.client.address == at(new)
    assert (HOST, new) in vol.client.servers
    # and back, once the old node leads again
    fake.set_leader(fake.port)
    await asyncio.wait_for(vol.write(CS, b"i" * CS), 10)
    assert vol.client.address == at(fake.port) and vol.client.failovers == 2


# ---------------------------------------------------------------- one address, as before


async def test_single_address_behaviour_is_unchanged(fake, volumes, devices):
    vol = await volumes(fake.port)
    assert vol.client.servers == [(HOST, fake.port)] and vol.client.address == at(fake.port)
    await fake.restart(downtime=0.1)
    await asyncio.wait_for(vol.write(0, b"r" * CS), 10)
    assert vol.client.reconnects == 1 and vol.client.failovers == 0
    dead = free_port()
    with pytest.raises(ConnectionRefusedError):  # its own error, not NoLeaderError
        await csnap_client.connect(HOST, dead, origin=devices[0])
    fake.set_leader(None)
    with pytest.raises(NotLeaderError, match="no leader is elected"):
        await csnap_client.connect(HOST, fake.port, origin=devices[0])


# ---------------------------------------------------------------- through csnap-nbd


class NbdWire(Wire):
    """The NBD test client of tests/nbd, for exports of any size."""

    def go(self, name: str, contexts: tuple[str, ...] = ()) -> int:
        raw = name.encode()
        replies = self.option(nbd.OPT_GO, struct.pack(">I", len(raw)) + raw
                              + struct.pack(">H", 0))
        assert replies[-1][0] == nbd.REP_ACK, replies
        return 0

    def call(self, typ: int, offset: int, length: int, payload: bytes = b"") -> bytes:
        """One command; its data (reads); AssertionError on an NBD error."""
        self.request(typ, 7, offset, length, payload=payload)
        cookie, error, data = self.simple_reply(length if typ == nbd.CMD_READ else 0)
        assert (cookie, error) == (7, 0), error
        return data


async def test_an_nbd_client_sees_a_pause_not_an_error_across_a_failover(
        fake, devices, tmp_path):
    """csnap-nbd's sessions (catalogue and volume) follow the lead: a write issued while
    no node leads waits and then succeeds, and so does opening an export not yet open
    (its session is connected during the failover)."""
    new = await fake.add_node()
    await fake.create_snapshot("s")
    gateway = Gateway(HOST, fake.port, devices[0], devices[1], servers=[at(new)],
                      reconnect_delay=0.02, reconnect_max_delay=0.2)
    await gateway.start()
    server = NbdServer(gateway)
    path = str(tmp_path / "nbd.sock")
    await server.listen_unix(path)
    loop = asyncio.get_running_loop()
    first_done, go_on = asyncio.Event(), threading.Event()

    def origin_client() -> bytes:
        w = NbdWire(path)
        w.go("origin")
        w.call(nbd.CMD_WRITE, 3 * CS, CS, b"1" * CS)
        loop.call_soon_threadsafe(first_done.set)
        go_on.wait(10)
        w.call(nbd.CMD_WRITE, 4 * CS, CS, b"2" * CS)  # no leader at first: a pause
        w.call(nbd.CMD_FLUSH, 0, 0)
        data = w.call(nbd.CMD_READ, 3 * CS, 2 * CS)
        w.close()
        return data

    def snapshot_client() -> bytes:
        go_on.wait(10)
        w = NbdWire(path)
        w.go("s")  # LIST_VOLUMES and the new session wait for the leader
        data = w.call(nbd.CMD_READ, 3 * CS, 2 * CS)
        w.close()
        return data

    try:
        task = asyncio.ensure_future(asyncio.to_thread(origin_client))
        await asyncio.wait_for(first_done.wait(), 10)
        fake.set_leader(None)
        snap_task = asyncio.ensure_future(asyncio.to_thread(snapshot_client))
        go_on.set()
        await asyncio.sleep(0.5)
        assert not task.done() and not snap_task.done()  # paused
        fake.set_leader(new)
        assert await asyncio.wait_for(task, 15) == b"1" * CS + b"2" * CS
        assert await asyncio.wait_for(snap_task, 15) == pattern(3) + pattern(4)
        assert read_file(devices[0], 4 * CS, CS) == b"2" * CS
        assert ops_on(fake, new, "QUERY_WRITE") >= 1  # resent there (and asked again)
        catalogue = gateway.catalogue
        assert catalogue is not None
        await wait_until(lambda: catalogue.address == at(new))  # at its next PING
    finally:
        go_on.set()
        await server.close()
        await gateway.close()


async def test_csnap_nbd_opening_an_export_while_no_node_leads_waits(fake, devices):
    """A volume session connected while some node answers but none leads waits for the
    leader (an export opened then is a pause); nodes that all refuse fail at once."""
    new = await fake.add_node()
    await fake.create_snapshot("s")
    gateway = Gateway(HOST, fake.port, devices[0], devices[1], servers=[at(new)],
                      reconnect_delay=0.02, reconnect_max_delay=0.1)
    await gateway.start()
    try:
        export = await gateway.resolve("s")
        assert export is not None
        fake.set_leader(None)
        opening = asyncio.ensure_future(gateway.acquire(export))
        await asyncio.sleep(0.4)
        assert not opening.done()
        fake.set_leader(new)
        volume = await asyncio.wait_for(opening, 10)
        assert volume.client.address == at(new)
        await gateway.release(volume)
        lost = Gateway(HOST, free_port(), devices[0], devices[1], servers=[at(free_port())])
        with pytest.raises(ExportError, match="connection refused"):
            await asyncio.wait_for(lost.acquire(export), 5)
        await lost.close()
    finally:
        await gateway.close()


# ---------------------------------------------------------------- command lines


def test_tools_take_a_comma_list_of_servers(capsys):
    assert nbd_cli.parse_servers("h1:1,[::1]:2, h1:1") == [("h1", 1), ("::1", 2)]
    assert csnap_io.parse_servers("h1:1,h2:2") == [("h1", 1), ("h2", 2)]
    assert csnap_io.parse_server("[::1]:99") == ("::1", 99)  # the first, as before
    assert nbd_cli.main(["--server", "h1:1,h2", "--origin", "o", "--store", "s"]) == 2
    assert "--server must be HOST:PORT" in capsys.readouterr().err
    assert csnap_io.main(["--server", "h1:1,,h2:x", "--volume", "origin", "--origin", "o",
                          "read", "--length", "1"]) == 2
    assert "'h2:x'" in capsys.readouterr().err


async def test_csnap_io_finds_the_leader_and_names_each_node_when_none_answers(
        fake, devices, capsysbinary):
    leader = await fake.add_node()
    fake.set_leader(leader)
    dead = free_port()
    argv = ["--server", f"{at(dead)},{at(fake.port)}", "--volume", "origin",
            "--origin", devices[0], "read", "--length", "5"]
    assert await asyncio.to_thread(csnap_io.main, argv) == 0
    assert capsysbinary.readouterr().out == pattern(0)[:5]
    fake.set_leader(None)
    assert await asyncio.to_thread(csnap_io.main, argv) == 3
    err = capsysbinary.readouterr().err.decode()
    assert f"cannot connect to csnapd at {at(dead)},{at(fake.port)}" in err
    assert f"{at(dead)}: connection refused" in err and "no leader is elected" in err
