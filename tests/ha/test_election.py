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


def test_etcd_down_stops_changes_within_the_lease_and_service_resumes(pair, etcd):
    """Safety over availability: with etcd unreachable the leader cannot know whether
    its lease still holds, so it stops changes once the lease (counted from the last
    renewal sent) ends; when etcd is back a leader is elected and serves again."""
    pair.start()
    leader = pair.wait_leader()
    assert pair.nodes[leader].ctl(m.create_snapshot(1, "a"))["op"] != "ERROR"
    etcd.proc.send_signal(signal.SIGSTOP)
    down = time.monotonic()
    try:
        deadline = down + 10
        # "down": a status request in flight at the switch has its connection closed
        while pair.role(leader) in ("leader", "down") and time.monotonic() < deadline:
            time.sleep(0.02)
        stood_down = time.monotonic() - down
        assert pair.role(leader) == "standby"
        assert stood_down < 2 * 1.0 + 1, stood_down  # the 1 s lease, with slack for polling
        reply = pair.nodes[leader].ctl(m.create_snapshot(1, "b"))
        assert reply["op"] == "ERROR" and reply["code"] == ErrorCode.NOT_LEADER
        st = pair.status(leader)["result"]["ha"]
        assert st["etcd_reachable"] is False or st["leader"] is not None
    finally:
        etcd.proc.send_signal(signal.SIGCONT)
    back = pair.wait_leader(timeout=30)
    assert pair.nodes[back].ctl(m.create_snapshot(1, "b"))["op"] != "ERROR"
    names = [s["name"] for s in pair.status(back)["result"]["snapshots"]]
    assert names == ["a", "b"]
    assert "could not be renewed" in pair.nodes[leader].log_text()


def test_csnapctl_on_either_node_says_which_one_leads(pair):
    pair.start()
    leader = pair.wait_leader()
    standby = pair.other(leader)
    out = run_tool("csnapctl", "--control", str(pair.nodes[standby].control), "status")
    assert f"STANDBY; the leader is {leader} at {pair.address(leader)}" in out.stdout
    out = run_tool("csnapctl", "--control", str(pair.nodes[leader].control), "status")
    assert f"this node ({leader}) LEADS under epoch" in out.stdout
    refused = run_tool("csnapctl", "--control", str(pair.nodes[standby].control), "create",
                       "x", check=False)
    assert refused.returncode != 0
    assert leader in refused.stderr and "leader" in refused.stderr


def test_bad_ha_options_are_refused_in_words(tmp_path):
    base = ["--store", str(tmp_path / "s"), "--origin", str(tmp_path / "o"), "--control",
            str(tmp_path / "c.sock")]
    for extra, words in ((["--etcd", "https://x:1"], "--etcd"),
                         (["--etcd", "http://127.0.0.1:1", "--ha-lease", "0.2"], "--ha-lease"),
                         (["--etcd", "http://127.0.0.1:1", "--advertise", "nope"],
                          "--advertise"),
                         (["--node", "a"], "--etcd")):
        proc = run_tool("csnapd", *base, *extra, check=False)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert words in proc.stderr, proc.stderr


def test_ha_metrics_say_which_node_leads(tmp_path, etcd):
    import urllib.request

    from tests.integration.conftest import free_port

    from .conftest import HAPair
    pair = HAPair(tmp_path, etcd)
    ports = {}
    for name, h in pair.nodes.items():
        ports[name] = free_port()
        h.extra = (*h.extra, "--metrics", f"127.0.0.1:{ports[name]}")
    try:
        pair.start()
        leader = pair.wait_leader()
        values = {}
        for name, port in ports.items():
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                          timeout=10).read().decode()
            line = next(x for x in text.splitlines() if x.startswith("csnap_ha_leader "))
            values[name] = float(line.split()[1])
            assert "csnap_ha_etcd_reachable 1.0" in text
        assert values == {leader: 1.0, pair.other(leader): 0.0}
    finally:
        pair.stop_all()


def test_a_store_that_cannot_be_served_is_not_taken_over_in_a_loop(tmp_path, etcd):
    """A store marked corrupt: the elected node says why, gives the key up and backs
    off, so the nodes do not churn through elections; neither serves it."""
    from csnapd.store.paths import open_store

    from .conftest import HAPair
    pair = HAPair(tmp_path, etcd)
    s = open_store(str(pair.store), str(pair.origin))
    s.mark_corrupt("test: damaged on purpose")
    s.abandon()
    try:
        pair.start()
        time.sleep(3)
        assert {pair.role(n) for n in pair.nodes} == {"standby"}
        logs = "".join(h.log_text() for h in pair.nodes.values())
        assert "could not take over" in logs and "csnap-check" in logs
        assert logs.count("elected leader") <= 4, logs.count("elected leader")
    finally:
        pair.stop_all()
