"""Just enough of the protobuf wire format to read and write MindSpore checkpoints and strategy files.

We do not use the ``protobuf`` package: its parser needs the whole message in memory and refuses messages over
2 GiB, while checkpoint shards routinely exceed that. Reading only needs varints and tags; writing only needs
the headers that precede a payload whose bytes we stream ourselves.

Every decoder takes an explicit ``end`` bound and raises :class:`WireError` instead of reading past it, so a
hostile length can never make the caller allocate or seek beyond the data it actually has.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
START_GROUP = 3
END_GROUP = 4
FIXED32 = 5

MAX_VARINT_BYTES = 10
_UINT64_LIMIT = 1 << 64


class WireError(ValueError):
    """Malformed protobuf bytes; ``offset`` is where decoding stopped, relative to the buffer given."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} at byte {offset}")
        self.reason = reason
        self.offset = offset


def encode_varint(value: int) -> bytes:
    """Encode an unsigned 64-bit value; negative int64 values use their two's complement, as protobuf does."""
    if not -(1 << 63) <= value < _UINT64_LIMIT:
        raise ValueError(f"varint out of 64-bit range: {value}")
    if value < 0:
        value += _UINT64_LIMIT
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint_size(value: int) -> int:
    """Length of ``encode_varint(value)`` without building it, for sizing headers up front."""
    if value < 0:
        return MAX_VARINT_BYTES
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def decode_varint(buf: bytes | bytearray | memoryview, pos: int, end: int, *, wrap: bool = False) -> tuple[int, int]:
    """Decode the varint at ``pos``; return ``(value, next_pos)``.

    Refuses varints that run past ``end`` or exceed ten bytes, so a stream of 0xFF bytes cannot make us
    loop or build an unbounded integer. Bits beyond 64 are an error, or, with ``wrap``, dropped as every
    protobuf runtime drops them (how MindSpore reads a strategy file).
    """
    end = min(end, len(buf))
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise WireError("truncated varint", start)
        if pos - start >= MAX_VARINT_BYTES:
            raise WireError("varint longer than 10 bytes", start)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    if result >= _UINT64_LIMIT:
        if not wrap:
            raise WireError("varint overflows 64 bits", start)
        result &= _UINT64_LIMIT - 1
    return result, pos


def to_int64(value: int) -> int:
    """Reinterpret a decoded varint as the signed int64 that protobuf ``int64`` fields carry."""
    return value - _UINT64_LIMIT if value >= 1 << 63 else value


def encode_tag(field: int, wire_type: int) -> bytes:
    """The key that precedes every field: field number and wire type packed into one varint."""
    if field < 1 or not 0 <= wire_type <= 5:
        raise ValueError(f"bad field {field} / wire type {wire_type}")
    return encode_varint((field << 3) | wire_type)


def decode_tag(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[int, int, int]:
    """Decode a field key; return ``(field, wire_type, next_pos)``. Field number 0 is never valid."""
    key, nxt = decode_varint(buf, pos, end)
    field, wire_type = key >> 3, key & 7
    if field == 0:
        raise WireError("field number 0", pos)
    if wire_type > 5:
        raise WireError(f"invalid wire type {wire_type}", pos)
    return field, wire_type, nxt


def encode_varint_field(field: int, value: int) -> bytes:
    """A complete varint-typed field (key and value)."""
    return encode_tag(field, VARINT) + encode_varint(value)


def encode_length_prefix(field: int, length: int) -> bytes:
    """Key and length of a length-delimited field whose ``length`` payload bytes the caller writes next.

    Splitting the header from the payload is what lets a writer stream a payload it never holds whole.
    """
    if length < 0:
        raise ValueError(f"negative length {length}")
    return encode_tag(field, LENGTH_DELIMITED) + encode_varint(length)


def length_field_size(field: int, length: int) -> int:
    """Total encoded size of a length-delimited field with a ``length``-byte payload."""
    return varint_size((field << 3) | LENGTH_DELIMITED) + varint_size(length) + length


def encode_bytes_field(field: int, payload: bytes | bytearray | memoryview) -> bytes:
    """A complete length-delimited field, for the small payloads (names, type strings) kept in memory."""
    return encode_length_prefix(field, len(payload)) + bytes(payload)


def read_length(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[int, int]:
    """Decode a length prefix and check that many bytes remain before ``end``; return ``(length, next_pos)``.

    Checking here, once, means no caller can act on a length that the data cannot back.
    """
    length, nxt = decode_varint(buf, pos, end)
    if length > end - nxt:
        raise WireError(f"length {length} exceeds the {end - nxt} bytes remaining", pos)
    return length, nxt


# ---------------------------------------------------------------------------------------------------------
# Lenient schema walking, as MindSpore's protobuf runtime reads a strategy file
# ---------------------------------------------------------------------------------------------------------

MAX_GROUP_DEPTH = 100  # protobuf's own recursion limit; deeper unknown groups are rejected, not followed


def decode_varint_wrapping(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[int, int]:
    """`decode_varint` with bits beyond 64 dropped, as every protobuf runtime does."""
    return decode_varint(buf, pos, end, wrap=True)


def encode_varint64(value: int) -> bytes:
    """Any int32/int64/uint32/uint64 field value: negatives go out as ten-byte two's complement."""
    return encode_varint(value & 0xFFFFFFFFFFFFFFFF)


def as_int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def as_uint32(v: int) -> int:
    return v & 0xFFFFFFFF


def _skip_group(buf: bytes, pos: int, end: int, field_no: int) -> int:
    """Skip an unknown (deprecated) group up to its matching end tag, without recursion."""
    stack = [field_no]
    while stack:
        if len(stack) > MAX_GROUP_DEPTH:
            raise WireError("groups nested too deeply", pos)
        tag, pos = decode_varint_wrapping(buf, pos, end)
        num, wt = tag >> 3, tag & 7
        if wt == END_GROUP:
            if stack.pop() != num:
                raise WireError("mismatched end-group tag", pos)
        elif wt == START_GROUP:
            stack.append(num)
        else:
            pos = _skip_value(buf, pos, end, wt)
    return pos


def _skip_value(buf: bytes, pos: int, end: int, wt: int) -> int:
    if wt == VARINT:
        return decode_varint_wrapping(buf, pos, end)[1]
    if wt == FIXED64:
        pos += 8
    elif wt == FIXED32:
        pos += 4
    elif wt == LENGTH_DELIMITED:
        n, pos = decode_varint_wrapping(buf, pos, end)
        pos += n
    else:
        raise WireError(f"invalid wire type {wt}", pos)
    if pos > end:
        raise WireError("field runs past the end of its message", pos)
    return pos


def iter_fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field number, wire type, a, b) for each field of the message in buf[pos:end].

    For varints `a` is the value; for length-delimited fields `a:b` is the payload. Fixed-width values and
    groups are skipped, never yielded. A field whose tag is padded (non-minimal) is skipped too: MindSpore's
    protobuf runtime recognises fields by their exact tag bytes, so it keeps such a field as unknown.
    """
    while pos < end:
        tag = buf[pos]
        padded = False
        if tag < 0x80:  # one-byte tag, the only kind these schemas' fields use
            pos += 1
        else:
            start = pos
            tag, pos = decode_varint_wrapping(buf, pos, end)
            padded = pos - start != varint_size(tag)
        num, wt = tag >> 3, tag & 7
        if num == 0:
            raise WireError("field number 0", pos)
        if padded:
            pos = _skip_group(buf, pos, end, num) if wt == START_GROUP else _skip_value(buf, pos, end, wt)
            continue
        if wt == VARINT:
            value, pos = decode_varint_wrapping(buf, pos, end)
            yield num, wt, value, pos
        elif wt == LENGTH_DELIMITED:
            if pos < end and buf[pos] < 0x80:
                n = buf[pos]
                pos += 1
            else:
                n, pos = decode_varint_wrapping(buf, pos, end)
            if n > end - pos:
                raise WireError("length-delimited field runs past the end of its message", pos)
            yield num, wt, pos, pos + n
            pos += n
        elif wt == START_GROUP:
            pos = _skip_group(buf, pos, end, num)
        elif wt == END_GROUP:
            raise WireError("unexpected end-group tag", pos)
        else:
            pos = _skip_value(buf, pos, end, wt)
