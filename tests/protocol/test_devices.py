"""The device-verification additions to the catalogue: IDENTIFY_OK.devices, VERIFY_*."""

import pytest

from csnap_client import protocol as P
from csnap_client.protocol import (
    CLIENT_REQUESTS,
    MAX_SAMPLE_BYTES,
    MAX_SAMPLES,
    MAX_STORE_MARKS,
    SERVER_MESSAGES,
    BadRequest,
    ErrorCode,
    validate,
)


def identify_ok(devices):
    return P.identify_ok(2, chunk_size=4096, origin_chunks=1, origin_bytes=4096,
                         store_uuid="u", server_epoch=1, lease_ms=1, devices=devices)


GOOD_DEVICES = P.devices_info([[72, b"x" * 16]], 4096, [[0, 4096]])

BAD_DEVICES = [
    "no", [], {}, {**GOOD_DEVICES, "extra": 1},
    {k: v for k, v in GOOD_DEVICES.items() if k != "origin"},
    {**GOOD_DEVICES, "store": "x"}, {**GOOD_DEVICES, "store": [[72]]},
    {**GOOD_DEVICES, "store": [[72, "uuid-as-str"]]}, {**GOOD_DEVICES, "store": [[72, b""]]},
    {**GOOD_DEVICES, "store": [[-1, b"x"]]}, {**GOOD_DEVICES, "store": [[72, b"x" * 1025]]},
    {**GOOD_DEVICES, "store": [[72, b"x"]] * (MAX_STORE_MARKS + 1)},
    {**GOOD_DEVICES, "store_bytes": -1}, {**GOOD_DEVICES, "store_bytes": True},
    {**GOOD_DEVICES, "origin": [[0, 0]]}, {**GOOD_DEVICES, "origin": [[0, MAX_SAMPLE_BYTES + 1]]},
    {**GOOD_DEVICES, "origin": [[0]]}, {**GOOD_DEVICES, "origin": [[0.5, 1]]},
    {**GOOD_DEVICES, "origin": [[2**64 - 1, 2]]},
    {**GOOD_DEVICES, "origin": [[0, 1]] * (MAX_SAMPLES + 1)},
]


def test_new_ops_are_directed_right():
    assert "VERIFY_DEVICES" in CLIENT_REQUESTS
    assert {"VERIFY_OK", "VERIFY_AGAIN"} <= SERVER_MESSAGES
    assert P.CATALOGUE["VERIFY_DEVICES"].replies == ("VERIFY_OK", "VERIFY_AGAIN", "ERROR")


def test_wrong_device_code_and_class():
    assert ErrorCode.WRONG_DEVICE == 302
    exc = P.error_from_reply(P.reply_error(4, ErrorCode.WRONG_DEVICE, "origin: 3 of 8 differ"))
    assert isinstance(exc, P.WrongDeviceError) and isinstance(exc, P.RemoteError)
    assert not exc.retryable and exc.message == "origin: 3 of 8 differ"


def test_identify_ok_devices_valid():
    assert validate(identify_ok(GOOD_DEVICES))["devices"] is GOOD_DEVICES
    assert validate(identify_ok(P.devices_info([], 0, [])))


@pytest.mark.parametrize("devices", BAD_DEVICES, ids=range(len(BAD_DEVICES)))
def test_identify_ok_bad_devices(devices):
    with pytest.raises(BadRequest) as ei:
        validate(identify_ok(devices))
    assert ei.value.code == ErrorCode.BAD_REQUEST and "devices" in ei.value.reason


@pytest.mark.parametrize("origin", [
    "x", None, [1.5], [-1], [2**32], [True], [[1]], [0] * (MAX_SAMPLES + 1)])
def test_verify_devices_bad_checksums(origin):
    with pytest.raises(BadRequest) as ei:
        validate({"op": "VERIFY_DEVICES", "id": 9, "origin": origin}, CLIENT_REQUESTS)
    assert ei.value.code == ErrorCode.BAD_REQUEST and ei.value.request_id == 9


@pytest.mark.parametrize("msg", [
    {"op": "VERIFY_DEVICES", "id": 9},
    {"op": "VERIFY_DEVICES", "id": 9, "origin": [], "store": True},
    {"op": "VERIFY_AGAIN", "id": 9, "origin": [[0, 1]]},
    {"op": "VERIFY_AGAIN", "id": 9, "origin": [[0, 0]], "differ": 1},
])
def test_verify_messages_missing_or_extra_fields(msg):
    with pytest.raises(BadRequest) as ei:
        validate(msg)
    assert ei.value.code == ErrorCode.BAD_REQUEST
