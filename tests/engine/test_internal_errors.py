"""A bug in one handler answers INTERNAL and harms no one else; a bug while metadata
may be half-changed stops all further changes instead of committing a broken state."""

from __future__ import annotations

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m
from csnapd.store import diff as sd

from .test_changes import ask
from .test_service import connect, create_snapshot, engine  # noqa: F401


def test_bug_in_a_read_only_handler_answers_internal_and_serving_goes_on(engine, monkeypatch):  # noqa: F811
    connect(engine, 1)
    create_snapshot(engine, "a", [1])
    connect(engine, 2, "a")

    def broken(*args, **kwargs):
        raise AttributeError("'BTree' object has no attribute 'leaves'")

    monkeypatch.setattr(sd, "changed_chunks", broken)
    reply, _ = ask(engine, 2, m.query_changes(5, "origin"))
    assert reply["code"] == ErrorCode.INTERNAL and "QUERY_CHANGES" in reply["message"]
    assert "leaves" in reply["message"]
    assert engine.counters["internal_errors"] == 1
    assert not engine.store.failed  # nothing changed: writes still go on
    reply, _ = ask(engine, 1, m.query_write(6, [[3, 1]]))
    assert reply["op"] != "ERROR"


def test_bug_while_changing_metadata_refuses_further_changes(engine, monkeypatch):  # noqa: F811
    connect(engine, 1)
    create_snapshot(engine, "a", [1])

    def broken(*args, **kwargs):
        raise KeyError("half way")

    monkeypatch.setattr(engine.store, "origin_write", broken)
    engine.handle_message(1, m.query_write(5, [[10, 2]]), 0.0)
    (cid, reply), = engine.take().now
    assert reply["code"] == ErrorCode.INTERNAL
    assert engine.store.failed
    monkeypatch.undo()
    engine.handle_message(1, m.query_write(6, [[20, 1]]), 0.0)
    (cid, reply), = engine.take().now
    assert reply["code"] == ErrorCode.STORE_CORRUPT  # refused, not half-done
