"""Control frames from untrusted peers: anything malformed is one clear ControlError."""

import pytest
from dropbear import control
from hypothesis import given
from hypothesis import strategies as st


def test_round_trip() -> None:
    frame = control.encode(control.Control.REJECT, {"request_id": 3, "reason": "why"})
    assert control.decode(frame) == (control.Control.REJECT, {"request_id": 3, "reason": "why"})


@pytest.mark.parametrize("frame,message", [
    (b"\xc0\x01" + b"[" * 60000, "not JSON"),  # nested too deep for the JSON parser
    (b"\xc0\x01\xff\xfe", "not JSON"),
    (b"\xc0\x01[1, 2]", "must be a JSON object"),
    (b"\xc0\x63{}", "unknown control kind 99"),
    (b"\x01\x01{}", "not a control frame"),
    (b"\xc0\x01" + b" " * control.MAX_CONTROL_BYTES, "limit"),
])
def test_malformed_frames_are_control_errors(frame: bytes, message: str) -> None:
    with pytest.raises(control.ControlError, match=message):
        control.decode(frame)


@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_another_error(data: bytes) -> None:
    try:
        control.decode(b"\xc0" + data)
    except control.ControlError:
        pass
