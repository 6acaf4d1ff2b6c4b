"""Two real csnapd nodes elected through a real etcd: roles, answers, takeover."""

from __future__ import annotations

import signal
import socket
import time

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m
from tests.integration.conftest import RawClient, run_tool

from .conftest import needs_etcd

pytestmark = needs_etcd


def test_one_node_leads_and_the_other_names_it(pair):
    pair.start()
    leader = pair.wait_leader()
    standby = pair.other(leader)
    st = pair.status(standby)["result"]
    assert st["role"] == "standby"
    assert st["ha"]["leader"] == leader
    assert st["ha"]["leader_address"] == pair.address(leader)
    lst = pair.status(leader)["result"]
    assert lst["ha"]["role"] == "leader" and lst["ha"]["epoch"] > 0
    # a data client on the standby is sent to the leader
    h = pair.nodes[standby]
    c = RawClient(socket.create_connection(("127.0.0.1", h.port), timeout=10))
    reply = c.call(m.identify(0, 77, "origin"))
    assert reply["op"] == "ERROR" and reply["code"] == ErrorCode.NOT_LEADER
    assert reply["leader"] == pair.address(leader)
    c.sock.close()
    # and a change on its control socket is refused, naming the leader
    reply = h.ctl(m.create_snapshot(1, "s"))
    assert reply["code"] == ErrorCode.NOT_LEADER and leader in reply["message"]
    assert pair.nodes[leader].ctl(m.create_snapshot(1, "s"))["op"] != "ERROR"


def test_the_standby_takes_over_when_the_leader_is_killed(pair):
    pair.start()
    leader = pair.wait_leader()
    pair.nodes[leader].ctl(m.create_snapshot(1, "before"))
    epoch = pair.status(leader)["result"]["ha"]["epoch"]
    killed = time.monotonic()
    pair.nodes[leader].stop(signal.SIGKILL)
    new = pair.wait_leader(among=(pair.other(leader),))
    took = time.monotonic() - killed
    st = pair.status(new)["result"]
    assert st["ha"]["epoch"] > epoch
    assert [s["name"] for s in st["snapshots"]] == ["before"]
    assert took < 10, took
    pair.nodes[new].stop()
    check = run_tool("csnap-check", "--store", str(pair.store), "--origin", str(pair.origin),
                     check=False)
    assert check.returncode == 0, check.stdout + check.stderr
