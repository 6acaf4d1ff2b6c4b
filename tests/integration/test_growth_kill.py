"""A model-based run of growth against a real csnapd: random origin writes (up to the
origin's current end), creates, deletes, store growths (within the bitmaps' reach and past
it) and origin growths, with SIGKILL at random points, some with the GROW in flight. After
every restart the store and origin sizes, each snapshot's size and its data are what the
model says (a GROW killed in flight: either size), and csnap-check agrees at the end."""

from __future__ import annotations

import random

from csnap_client.protocol import messages as m

from .conftest import make_server, run_tool, snapshot_chunk

MiB = 1 << 20


def _truncate(path, size: int) -> None:  # noqa: ANN001
    with open(path, "r+b") as f:
        f.truncate(size)


def _write_origin(handle, rng: random.Random, origin: list[bytes]) -> None:  # noqa: ANN001
    cs = handle.chunk_size
    count = rng.randint(1, 4)
    start = rng.randrange(len(origin) - count)
    client = handle.client("origin")
    assert client.info["origin_chunks"] == len(origin)
    assert client.call(m.query_write(0, [[start, count]]))["op"] == "WRITE_OK"
    with open(handle.origin, "r+b") as f:
        for c in range(start, start + count):
            origin[c] = rng.randbytes(cs)
            f.seek(c * cs)
            f.write(origin[c])
    client.close()


def _sizes(handle) -> tuple[int, int]:  # noqa: ANN001
    st = handle.ctl(m.status(1))["result"]["store"]
    return st["store_chunks"], st["origin_chunks"]


def test_growth_survives_sigkill_at_random_points(tmp_path):
    rng = random.Random(14)
    handle = make_server(tmp_path, origin_size=1 * MiB, store_size=32 * MiB)
    handle.start()
    cs = handle.chunk_size
    origin = [bytes(cs)] * (MiB // cs)
    snaps: dict[str, list[bytes]] = {}
    store_chunks = 32 * MiB // cs
    serial = kills = grows = 0
    for step in range(50):
        kind = rng.choice(["write"] * 4 + ["create", "delete", "sgrow", "ogrow", "kill"])
        if kind == "create" and len(snaps) < 4:
            serial += 1
            assert handle.ctl(m.create_snapshot(1, f"s{serial}"))["op"] == "OK"
            snaps[f"s{serial}"] = list(origin)
        elif kind == "delete" and snaps:
            name = rng.choice(sorted(snaps))
            assert handle.ctl(m.delete_snapshot(1, name))["op"] == "OK"
            del snaps[name]
        elif kind == "write":
            _write_origin(handle, rng, origin)
        elif kind in ("sgrow", "ogrow"):
            grows += 1
            if kind == "sgrow":
                step_up = (4 * MiB, 16 * MiB, 200 * MiB)[grows % 3]  # in and past the reach
                size = store_chunks * cs + step_up
                _truncate(handle.store, size)
                msg = m.grow(1, store=True)
            else:
                added = rng.randint(1, 64)
                _truncate(handle.origin, (len(origin) + added) * cs)
                msg = m.grow(1, origin=True)
            if rng.random() < 0.3:  # killed with the GROW in flight: either size
                ctl = handle.control_client()
                ctl.send(msg)
                handle.kill()
                handle.start()
                kills += 1
            else:
                reply = handle.ctl(msg)
                assert reply["op"] == "OK", reply
            now_store, now_origin = _sizes(handle)
            if kind == "sgrow":
                assert now_store in (store_chunks, size // cs), (now_store, store_chunks)
                store_chunks = now_store
            else:
                assert now_origin in (len(origin), len(origin) + added)
                origin += [bytes(cs)] * (now_origin - len(origin))
        elif kind == "kill":
            handle.kill()
            handle.start()
            kills += 1
        if kind == "kill" or step % 10 == 9:
            assert _sizes(handle) == (store_chunks, len(origin))
            listed = {s["name"] for s in handle.ctl(m.list_snapshots(1))["result"]}
            assert listed == set(snaps)
            for name, data in snaps.items():
                snap = handle.client(name)
                assert snap.info["origin_chunks"] == len(data), name
                snap.close()
                for chunk in rng.sample(range(len(data)), 3) + [len(data) - 1]:
                    assert snapshot_chunk(handle, name, chunk) == data[chunk], (name, chunk)
    assert kills >= 3 and grows >= 6, (kills, grows)
    assert store_chunks * cs > 128 * MiB  # past the bitmaps' reach at least once
    assert handle.stop() == 0
    check = run_tool("csnap-check", "--store", str(handle.store), "--origin",
                     str(handle.origin), check=False)
    assert check.returncode == 0, check.stdout + check.stderr
