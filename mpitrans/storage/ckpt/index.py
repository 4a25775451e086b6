"""Indexing a `.ckpt`: every tensor's name, type, shape and byte ranges, from headers alone.

Reading never loads tensor bytes to index a file: headers are parsed from small windows and contents are
skipped by offset, so files beyond protobuf's 2 GiB limit work.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from math import prod
from typing import NamedTuple

from mpitrans.errors import CheckpointFormatError, UnsupportedError
from mpitrans.storage import wire
from mpitrans.storage.ckpt.format import (
    CIPHER_MAGICS,
    CRC_CHUNK,
    CRC_MAGIC,
    CRC_TRAILER_BYTES,
    HEADER_WINDOW,
    ITEM_SIZES,
    MAX_DIMS,
    MAX_NAME_BYTES,
    MAX_TYPE_BYTES,
    TYPE_NAME,
    UNSUPPORTED_TYPES,
)
from mpitrans.storage.wire import LENGTH_DELIMITED, VARINT, WireError

# ----------------------------------------------------------------------------------------------------------


class Record(NamedTuple):
    """One stored piece of a tensor: ``nbytes`` content bytes at file ``offset``.

    ``start`` is where the piece begins within the tensor's C-order bytes. MindSpore's default writer cuts
    at fixed byte counts, not at rows, so a piece may begin mid-row; byte positions describe every layout.
    """

    offset: int
    nbytes: int
    start: int


@dataclass(frozen=True)
class TensorEntry:
    """Where one parameter's bytes live in a file, and how to interpret them."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    itemsize: int
    records: tuple[Record, ...]
    path: str = ""

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass
class CheckpointIndex:
    """Every tensor of one file in file order, plus what the trailer said."""

    path: str
    size: int
    entries: list[TensorEntry]
    crc: int | None = None  # the stored CRC when the file has a trailer
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason, with ``skip_unsupported``
    _by_name: dict[str, TensorEntry] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {e.name: e for e in self.entries}

    def get(self, name: str) -> TensorEntry | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> TensorEntry:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[TensorEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]


class _Parsed(NamedTuple):
    name: str
    dims: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int
    at: int  # file offset of the record, for messages


FAST_HEADER_BYTES = 4096  # a record header longer than this (a huge name) takes the careful path
_KNOWN_TYPES = {name.encode(): name for name in (*ITEM_SIZES, *UNSUPPORTED_TYPES)}


def _varint(buf: bytes, p: int) -> tuple[int, int]:
    """A varint at `p` of a window; IndexError past its end (the caller then takes the careful path)."""
    b = buf[p]
    if b < 0x80:
        return b, p + 1
    value, shift = b & 0x7F, 7
    while True:
        p += 1
        b = buf[p]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, p + 1
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


class _Header:
    """Windowed header reads: a few large preads instead of one syscall per varint."""

    def __init__(self, fd: int, size: int, path: str) -> None:
        self.fd = fd
        self.size = size
        self.path = path
        self.buf = b""
        self.base = 0

    def fail(self, message: str, offset: int, name: str | None = None) -> CheckpointFormatError:
        who = f"parameter {name!r}: " if name is not None else ""
        return CheckpointFormatError(f"{self.path}: {who}{message} (at byte {offset})")

    def fit(self, pos: int, n: int) -> None:
        """Make the window start at or before `pos` and hold at least `n` bytes from it, when it can."""
        if self.base <= pos and pos + n <= self.base + len(self.buf):
            return
        self.buf = _pread(self.fd, min(max(n, HEADER_WINDOW), self.size - pos), pos, self.path)
        self.base = pos

    def _ensure(self, pos: int, n: int) -> None:
        if self.base <= pos and pos + n <= self.base + len(self.buf):
            return
        self.buf = _pread(self.fd, min(max(n, HEADER_WINDOW), self.size - pos), pos, self.path)
        self.base = pos
        if len(self.buf) < n:  # every n was checked against the size, so the file shrank under us
            raise self.fail("file ended early (was it truncated while being read?)", pos + len(self.buf))

    def _decode(self, decoder: Callable[..., tuple[int, ...]], pos: int, end: int) -> tuple[int, ...]:
        """Run a wire decoder on the window, translating its buffer offsets back to file offsets."""
        self._ensure(pos, min(wire.MAX_VARINT_BYTES, end - pos))
        try:
            *values, nxt = decoder(self.buf, pos - self.base, end - self.base)
        except WireError as exc:
            raise self.fail(exc.reason, exc.offset + self.base) from None
        return (*values, nxt + self.base)

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        return self._decode(wire.decode_varint, pos, end)

    def tag(self, pos: int, end: int) -> tuple[int, int, int]:
        return self._decode(wire.decode_tag, pos, end)

    def length(self, pos: int, end: int) -> tuple[int, int]:
        """A length prefix, checked against the enclosing message before anyone uses it."""
        return self._decode(wire.read_length, pos, end)

    def bytes(self, pos: int, n: int) -> bytes:
        self._ensure(pos, n)
        start = pos - self.base
        return bytes(self.buf[start:start + n])


def _pread(fd: int, n: int, offset: int, path: str) -> bytes:
    try:
        return os.pread(fd, n, offset)
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: read failed at byte {offset}: {exc.strerror}") from exc


class _Scanner:
    """Walks the record stream once, checking every length against the bytes that actually exist."""

    def __init__(self, fd: int, size: int, path: str) -> None:
        self.h = _Header(fd, size, path)

    def records(self, end: int) -> Iterator[_Parsed | tuple[str, str, int]]:
        """Yield parsed tensor records, or ``(name, reason, offset)`` for values we cannot represent.

        Records laid out exactly as MindSpore writes them take a fast path (one window lookup, inline
        one-byte checks); anything else, including every malformed record, goes through the careful
        field-by-field parser, which also produces the error messages."""
        pos = 0
        while pos < end:
            fast = self._fast(pos, end)
            if fast is not None:
                yield fast[0]
                pos = fast[1]
                continue
            field_no, wire_type, p = self.h.tag(pos, end)
            if (field_no, wire_type) != (1, LENGTH_DELIMITED):
                raise self.h.fail(f"expected a checkpoint record, found field {field_no} (wire type "
                                  f"{wire_type})", pos)
            length, p = self.h.length(p, end)
            yield self._value(pos, p, p + length)
            pos = p + length

    def _fast(self, at: int, end: int) -> tuple[_Parsed, int] | None:
        """One record in MindSpore's exact layout (name, then tensor: dims, type, content), or None."""
        h = self.h
        h.fit(at, min(FAST_HEADER_BYTES, end - at))
        buf, base = h.buf, h.base
        p = at - base
        try:
            if buf[p] != 0x0A:
                return None
            length, p = _varint(buf, p + 1)
            rec_end = base + p + length
            if rec_end > end or buf[p] != 0x0A:
                return None
            n, p = _varint(buf, p + 1)
            if n > MAX_NAME_BYTES or p + n > len(buf):
                return None
            name = buf[p:p + n].decode("utf-8")
            p += n
            if buf[p] != 0x12:
                return None
            n, p = _varint(buf, p + 1)
            if base + p + n != rec_end:
                return None
            dims = []
            while buf[p] == 0x08:
                d = buf[p + 1]
                if d < 0x80:
                    p += 2
                else:
                    d, p = _varint(buf, p + 1)
                    if d >= 1 << 63:
                        return None
                dims.append(d)
            if len(dims) > MAX_DIMS:
                return None
            n = buf[p + 1]
            if buf[p] != 0x12 or n >= 0x80:
                return None
            dtype = _KNOWN_TYPES.get(buf[p + 2:p + 2 + n])
            p += 2 + n
            if dtype is None or buf[p] != 0x1A:
                return None
            n, p = _varint(buf, p + 1)
            if base + p + n != rec_end:
                return None
        except (IndexError, UnicodeDecodeError):
            return None
        return _Parsed(name, tuple(dims), dtype, base + p, n, at), rec_end

    def _value(self, at: int, pos: int, end: int) -> _Parsed | tuple[str, str, int]:
        name: str | None = None
        tensor: tuple[tuple[int, ...], str, int, int] | None = None
        is_map = False
        while pos < end:
            field_no, wire_type, p = self.h.tag(pos, end)
            if wire_type != LENGTH_DELIMITED or field_no not in (1, 2, 3):
                raise self.h.fail(f"unexpected field {field_no} (wire type {wire_type}) in a record",
                                  pos, name)
            length, p = self.h.length(p, end)
            if field_no == 1:
                if name is not None:
                    raise self.h.fail("record has two names", pos, name)
                name = self._name(p, length)
            elif tensor is not None or is_map:
                raise self.h.fail("record holds more than one value", pos, name)
            elif field_no == 2:
                tensor = self._tensor(p, p + length, name)
            else:
                is_map = True
            pos = p + length
        if name is None:
            raise self.h.fail("record has no parameter name", at)
        if is_map:
            return (name, "a MapParameter (MapTensor) value", at)
        if tensor is None:
            raise self.h.fail("record has no tensor", at, name)
        return _Parsed(name, *tensor, at)

    def _name(self, pos: int, length: int) -> str:
        if length > MAX_NAME_BYTES:
            raise self.h.fail(f"parameter name of {length} bytes", pos)
        try:
            return self.h.bytes(pos, length).decode("utf-8")
        except UnicodeDecodeError:
            raise self.h.fail("parameter name is not UTF-8", pos) from None

    def _tensor(self, pos: int, end: int, name: str | None) -> tuple[tuple[int, ...], str, int, int]:
        dims: list[int] = []
        dtype: str | None = None
        content: tuple[int, int] | None = None
        while pos < end:
            field_no, wire_type, p = self.h.tag(pos, end)
            if field_no == 1 and wire_type == VARINT:
                value, p = self.h.varint(p, end)
                dims.append(wire.to_int64(value))
            elif field_no == 1 and wire_type == LENGTH_DELIMITED:  # packed dims: legal protobuf, accept it
                length, p = self.h.length(p, end)
                p = self._packed_dims(p, p + length, dims)
            elif field_no == 2 and wire_type == LENGTH_DELIMITED and dtype is None:
                length, p = self.h.length(p, end)
                dtype = self._type_name(p, length, name)
                p += length
            elif field_no == 3 and wire_type == LENGTH_DELIMITED and content is None:
                length, p = self.h.length(p, end)
                content = (p, length)
                p += length  # skipped, never read
            else:
                raise self.h.fail(f"unexpected field {field_no} (wire type {wire_type}) in a tensor",
                                  pos, name)
            if len(dims) > MAX_DIMS:
                raise self.h.fail(f"tensor has more than {MAX_DIMS} dimensions", pos, name)
            pos = p
        if dtype is None or content is None:
            raise self.h.fail("tensor lacks its type or its content", end, name)
        return tuple(dims), dtype, content[0], content[1]

    def _packed_dims(self, pos: int, end: int, dims: list[int]) -> int:
        while pos < end and len(dims) <= MAX_DIMS:
            value, pos = self.h.varint(pos, end)
            dims.append(wire.to_int64(value))
        return end

    def _type_name(self, pos: int, length: int, name: str | None) -> str:
        raw = self.h.bytes(pos, min(length, MAX_TYPE_BYTES + 1))
        text = raw.decode("ascii", errors="replace")
        if length > MAX_TYPE_BYTES or not TYPE_NAME.fullmatch(text):
            raise self.h.fail(f"tensor type {text[:MAX_TYPE_BYTES]!r} is not a MindSpore type name",
                              pos, name)
        return text


class _Group:
    """Consecutive records of one tensor, merged and checked against the declared shape."""

    def __init__(self, rec: _Parsed, shape: tuple[int, ...], itemsize: int) -> None:
        self.first = rec
        self.shape = shape
        self.itemsize = itemsize
        self.expected = prod(shape) * itemsize
        self.filled = 0
        self.records: list[Record] = []

    def add(self, rec: _Parsed, h: _Header) -> None:
        if rec.dims != self.first.dims or rec.dtype != self.first.dtype:
            raise h.fail(f"continuation record says {rec.dtype}{list(rec.dims)} but the first said "
                         f"{self.first.dtype}{list(self.first.dims)}", rec.at, rec.name)
        if rec.nbytes:
            self.records.append(Record(rec.offset, rec.nbytes, self.filled))
        self.filled += rec.nbytes
        if self.filled > self.expected:
            raise h.fail(f"holds more than the {self.expected} bytes its shape {list(self.shape)} needs",
                         rec.at, rec.name)

    def finish(self, h: _Header) -> TensorEntry:
        if self.filled != self.expected:
            raise h.fail(f"holds {self.filled} content bytes but {self.first.dtype}{list(self.shape)} needs "
                         f"{self.expected}", self.first.at, self.first.name)
        return TensorEntry(self.first.name, self.first.dtype, self.shape, self.itemsize, tuple(self.records),
                           h.path)


def _shape_of(rec: _Parsed, itemsize: int, h: _Header) -> tuple[int, ...]:
    if any(d < 0 for d in rec.dims):
        raise h.fail(f"negative dimension in {list(rec.dims)}", rec.at, rec.name)
    # Older MindSpore (and tools copied from it) wrote a 0-d scalar as dims [0]; its loader reads [0] as ().
    if rec.dims == (0,) and rec.nbytes == itemsize:
        return ()
    return rec.dims


def _trailer(h: _Header) -> tuple[int, int | None]:
    """Where the record stream ends, and the stored CRC if a trailer follows it (as MindSpore detects it)."""
    if h.size >= CRC_TRAILER_BYTES:
        tail = _pread(h.fd, CRC_TRAILER_BYTES, h.size - CRC_TRAILER_BYTES, h.path)
        if tail[: len(CRC_MAGIC)] == CRC_MAGIC:
            return h.size - CRC_TRAILER_BYTES, int.from_bytes(tail[len(CRC_MAGIC):], "big")
    return h.size, None


def _verify_crc(h: _Header, end: int, stored: int) -> None:
    crc = 0
    pos = 0
    while pos < end:
        chunk = _pread(h.fd, min(CRC_CHUNK, end - pos), pos, h.path)
        if not chunk:
            raise h.fail("file shrank while its CRC was being checked", pos)
        crc = zlib.crc32(chunk, crc)
        pos += len(chunk)
    if crc != stored:
        raise CheckpointFormatError(f"{h.path}: CRC mismatch (stored {stored:#x}, computed {crc:#x}); "
                                    f"the file is damaged")


def index_checkpoint(path: str | os.PathLike[str], *, verify_crc: bool = False,
                     skip_unsupported: bool = False, name: str | None = None) -> CheckpointIndex:
    """Map every tensor in a .ckpt to its byte ranges, reading headers only.

    ``verify_crc`` re-reads the whole file to check a CRC trailer when there is one (a file without a trailer
    passes, as with MindSpore). ``skip_unsupported`` lists string and MapTensor values in ``skipped`` instead
    of failing, for callers that only need the tensors around them. ``name`` is the file to name in
    messages and in the index when ``path`` is a stand-in for it (the decrypted copy of an encrypted file).
    """
    real = os.fspath(path)
    path = name or real
    try:
        fd = os.open(real, os.O_RDONLY)
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: cannot open checkpoint: {exc.strerror}") from exc
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise CheckpointFormatError(f"{path}: file is empty, not a MindSpore checkpoint")
        h = _Header(fd, size, path)
        if h.bytes(0, min(4, size)) in CIPHER_MAGICS:
            raise CheckpointFormatError(f"{path}: the file looks encrypted (saved with MindSpore's enc_key); "
                                        f"pass --dec-key-file and --dec-mode")
        end, stored = _trailer(h)
        if verify_crc and stored is not None:
            _verify_crc(h, end, stored)
        entries, skipped = _collect(_Scanner(fd, size, path), end, skip_unsupported)
        if not entries and not skipped:
            raise CheckpointFormatError(f"{path}: checkpoint holds no parameters")
        return CheckpointIndex(path, size, entries, stored, skipped)
    finally:
        os.close(fd)


def _collect(scanner: _Scanner, end: int, skip_unsupported: bool) -> tuple[list[TensorEntry], dict[str, str]]:
    h = scanner.h
    entries: list[TensorEntry] = []
    seen: set[str] = set()
    skipped: dict[str, str] = {}
    group: _Group | None = None
    last = None
    for rec in scanner.records(end):
        name = rec[0]
        if group is not None and name == last:
            if not isinstance(rec, _Parsed):
                raise h.fail("continues a tensor with a different kind of value", rec[-1], name)
            group.add(rec, h)
            continue
        if name == last and name in skipped:
            continue
        if group is not None:
            entries.append(group.finish(h))
            group = None
        if name in seen:
            raise h.fail("appears twice, in records that are not adjacent", rec[-1], name)
        seen.add(name)
        last = name
        reason = _unsupported_reason(rec)
        if reason is not None:
            if not skip_unsupported:
                raise UnsupportedError(f"{h.path}: parameter {name!r} is {reason}, which mpitrans "
                                       f"cannot reshard")
            skipped[name] = reason
            continue
        assert isinstance(rec, _Parsed)
        itemsize = ITEM_SIZES[rec.dtype]
        group = _Group(rec, _shape_of(rec, itemsize, h), itemsize)
        group.add(rec, h)
    if group is not None:
        entries.append(group.finish(h))
    return entries, skipped


def _unsupported_reason(rec: _Parsed | tuple[str, str, int]) -> str | None:
    if not isinstance(rec, _Parsed):
        return rec[1]
    if rec.dtype in ITEM_SIZES:
        return None
    return f"{UNSUPPORTED_TYPES.get(rec.dtype, 'a tensor type mpitrans does not know')} (type {rec.dtype!r})"


