"""The protobuf wire helpers: exact encodings, and refusal of every malformed or out-of-bounds input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpitrans.storage import wire
from mpitrans.storage.wire import WireError


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (2**63 - 1, b"\xff" * 8 + b"\x7f"),
        (2**64 - 1, b"\xff" * 9 + b"\x01"),
        (-1, b"\xff" * 9 + b"\x01"),
    ],
)
def test_varint_known_encodings(value: int, encoded: bytes) -> None:
    assert wire.encode_varint(value) == encoded
    assert wire.varint_size(value) == len(encoded)
    decoded, pos = wire.decode_varint(encoded, 0, len(encoded))
    assert pos == len(encoded)
    assert wire.to_int64(decoded) == (value if value < 2**63 else value - 2**64)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**64 - 1))
def test_varint_round_trip(value: int) -> None:
    encoded = wire.encode_varint(value)
    assert len(encoded) == wire.varint_size(value)
    decoded, pos = wire.decode_varint(b"junk" + encoded + b"tail", 4, 4 + len(encoded))
    assert pos == 4 + len(encoded)
    assert decoded == value % 2**64


def test_varint_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        wire.encode_varint(2**64)
    with pytest.raises(ValueError):
        wire.encode_varint(-(2**64))


@pytest.mark.parametrize(
    ("data", "end", "message"),
    [
        (b"", 0, "truncated"),
        (b"\x80", 1, "truncated"),
        (b"\x80\x80\x01", 2, "truncated"),  # the bound, not the buffer, ends it
        (b"\xff" * 10 + b"\x01", 11, "longer than 10"),
        (b"\xff" * 9 + b"\x02", 10, "overflows"),
        (b"\xff" * 100, 100, "longer than 10"),
    ],
)
def test_bad_varints(data: bytes, end: int, message: str) -> None:
    with pytest.raises(WireError, match=message):
        wire.decode_varint(data, 0, end)


def test_error_offset_is_where_the_varint_starts() -> None:
    with pytest.raises(WireError) as info:
        wire.decode_varint(b"\x01\x02\x80", 2, 3)
    assert info.value.offset == 2


def test_tags() -> None:
    assert wire.encode_tag(1, wire.LENGTH_DELIMITED) == b"\x0a"
    assert wire.encode_tag(3, wire.LENGTH_DELIMITED) == b"\x1a"
    assert wire.decode_tag(b"\x0a", 0, 1) == (1, wire.LENGTH_DELIMITED, 1)
    assert wire.decode_tag(b"\x80\x01", 0, 2) == (16, wire.VARINT, 2)
    with pytest.raises(WireError, match="field number 0"):
        wire.decode_tag(b"\x02", 0, 1)
    with pytest.raises(WireError, match="wire type 6"):
        wire.decode_tag(b"\x0e", 0, 1)
    with pytest.raises(ValueError):
        wire.encode_tag(0, 0)


def test_length_fields() -> None:
    assert wire.encode_bytes_field(2, b"Float32") == b"\x12\x07Float32"
    assert wire.encode_varint_field(1, 300) == b"\x08\xac\x02"
    for length in (0, 1, 127, 128, 2**31, 2**40):
        prefix = wire.encode_length_prefix(3, length)
        assert wire.length_field_size(3, length) == len(prefix) + length
    with pytest.raises(ValueError):
        wire.encode_length_prefix(3, -1)


def test_read_length_checks_remaining_bytes() -> None:
    data = wire.encode_varint(5) + b"abcde"
    assert wire.read_length(data, 0, len(data)) == (5, 1)
    with pytest.raises(WireError, match="exceeds"):
        wire.read_length(data, 0, len(data) - 1)
    huge = wire.encode_varint(2**62)
    with pytest.raises(WireError, match="exceeds"):
        wire.read_length(huge, 0, len(huge))
