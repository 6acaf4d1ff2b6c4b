"""Error table and exception hierarchy."""

import pytest

from csnap_client.protocol import (
    ERROR_TABLE,
    REMOTE_ERROR_CLASSES,
    BadRequest,
    ErrorCode,
    FramingError,
    ProtocolError,
    RemoteError,
    RemoteProtocolError,
    error_from_reply,
    reply_error,
    validate,
)
from csnap_client.protocol import errors as E

REQUIRED_NAMES = {
    "BAD_REQUEST", "UNKNOWN_OP", "NOT_IDENTIFIED", "ALREADY_IDENTIFIED", "VERSION_MISMATCH",
    "UNKNOWN_SNAPSHOT", "SNAPSHOT_DELETED", "SNAPSHOT_SQUASHED", "SNAPSHOT_EXISTS",
    "OUT_OF_RANGE", "READ_ONLY", "TOO_MANY_RANGES", "LIMIT_EXCEEDED", "STORE_FULL",
    "STORE_CORRUPT", "AUTH_FAILED", "PERMISSION_DENIED", "SHUTTING_DOWN", "BUSY", "INTERNAL",
}


def test_codes_and_names_unique():
    codes = [row[0] for row in ERROR_TABLE]
    names = [row[1] for row in ERROR_TABLE]
    assert len(codes) == len(set(codes))
    assert len(names) == len(set(names))
    assert REQUIRED_NAMES <= set(names)
    assert all(0 < c <= 2**32 - 1 for c in codes)


def test_every_code_has_one_class():
    assert set(REMOTE_ERROR_CLASSES) == {row[0] for row in ERROR_TABLE}
    assert len(set(REMOTE_ERROR_CLASSES.values())) == len(REMOTE_ERROR_CLASSES)
    for code, cls in REMOTE_ERROR_CLASSES.items():
        assert issubclass(cls, RemoteError)
        assert cls.code == code


@pytest.mark.parametrize("code", [row[0] for row in ERROR_TABLE])
def test_error_from_reply_picks_subclass(code):
    reply = reply_error(7, code, "boom")
    validate(reply)
    exc = error_from_reply(reply)
    assert type(exc) is REMOTE_ERROR_CLASSES[code]
    assert (exc.code, exc.message, exc.request_id) == (code, "boom", 7)
    assert ErrorCode(code).name in str(exc)


def test_error_from_reply_unknown_code_and_default_text():
    exc = error_from_reply({"op": "ERROR", "id": 1, "code": 999, "message": ""})
    assert type(exc) is RemoteError and exc.code == 999
    assert exc.message == "unknown error"
    exc = error_from_reply(reply_error(2, ErrorCode.STORE_FULL))
    assert isinstance(exc, E.StoreFullError)
    assert exc.message == E.default_text(ErrorCode.STORE_FULL)
    assert not exc.retryable
    assert error_from_reply(reply_error(3, ErrorCode.BUSY)).retryable


def test_duplicate_code_rejected():
    before = dict(REMOTE_ERROR_CLASSES)
    with pytest.raises(RuntimeError):
        class Again(RemoteError):
            code = ErrorCode.BUSY
    assert REMOTE_ERROR_CLASSES == before


def test_hierarchy():
    assert issubclass(FramingError, RemoteProtocolError)
    assert issubclass(BadRequest, RemoteProtocolError)
    assert issubclass(E.LocalProtocolError, ProtocolError)
    assert issubclass(RemoteError, ProtocolError)
    assert not issubclass(RemoteError, RemoteProtocolError)
    assert E.error_name(12345) == "UNKNOWN(12345)"
