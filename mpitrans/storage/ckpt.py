"""Read and write MindSpore ``.ckpt`` files without MindSpore and without holding tensors in memory.

Format (as written by ``mindspore.save_checkpoint``): the file is a run of serialized ``Checkpoint`` messages,
one per *record*; protobuf concatenation makes the whole file parse as a single ``Checkpoint`` whose repeated
``value`` field lists every record. A record is::

    Checkpoint.value (1) -> Value { tag (1): name, tensor (2): TensorProto { dims (1)*, tensor_type (2),
                                                                           tensor_content (3) } }

A tensor larger than ``RECORD_BYTES`` is cut into several consecutive records with the same name; every record
repeats the full dims, and the loader simply concatenates their contents. The default (synchronous) saver cuts
at fixed byte counts, possibly mid-row; the asynchronous saver instead uses ``np.array_split`` along axis 0,
giving uneven row groups. We read either layout and write the first. A 0-d scalar has no dims (older writers
used ``[0]``); a string is a ``"str"`` record of UTF-32 text; a tensor with no elements gets no record at all.
Files saved with ``crc_check=True`` end with ``b"crc_num"`` plus the CRC-32 of everything before it as a
10-byte big-endian integer.

Reading never loads tensor bytes to index a file: headers are parsed from small windows and contents are
skipped by offset, so files beyond protobuf's 2 GiB limit work. Tensor elements are treated as opaque
``itemsize``-byte cells, so bfloat16 and every other type round-trip bit for bit.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from math import prod
from typing import BinaryIO, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from mpitrans.errors import CheckpointFormatError, UnsupportedError
from mpitrans.storage import wire
from mpitrans.storage.wire import LENGTH_DELIMITED, VARINT, WireError

# MindSpore cuts a tensor's bytes into records of at most this many bytes (its SLICE_SIZE KiB times 1024).
# Tests monkeypatch it, together with MindSpore's SLICE_SIZE, to exercise multi-record tensors on small data.
RECORD_BYTES = 512 * 1024 * 1024

ITEM_SIZES: dict[str, int] = {
    "Float16": 2, "Float32": 4, "Float64": 8, "BFloat16": 2,
    "Int8": 1, "Int16": 2, "Int32": 4, "Int64": 8,
    "UInt8": 1, "UInt16": 2, "UInt32": 4, "UInt64": 8,
    "Bool": 1,
}

# Types MindSpore can write into a .ckpt but that we refuse, with the reason shown to the user.
_UNSUPPORTED_TYPES: dict[str, str] = {
    "str": "a string value",
    "String": "a string value",
    "Int4": "packed 4-bit integers",
    "Complex64": "a complex tensor (MindSpore's own loader rejects it too)",
    "Complex128": "a complex tensor (MindSpore's own loader rejects it too)",
    "Float8E4M3FN": "an 8-bit float tensor (MindSpore's own loader rejects it too)",
    "Float8E5M2": "an 8-bit float tensor (MindSpore's own loader rejects it too)",
    "HiFloat8": "an 8-bit float tensor (MindSpore's own loader rejects it too)",
}
_TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")

CRC_MAGIC = b"crc_num"
CRC_TRAILER_BYTES = len(CRC_MAGIC) + 10

# First four bytes of MindSpore's encrypted output (an int32 magic per cipher mode, little-endian).
_CIPHER_MAGICS = (b"\xd8\x5e\x3a\x7f", b"\xd9\x5e\x3a\x7f", b"\xda\x5e\x3a\x7f")

_HEADER_WINDOW = 64 * 1024  # bytes fetched per header read; small tensors' contents ride along in it
_MAX_NAME_BYTES = 1 << 20  # a parameter name longer than this is corruption, not a name
_MAX_TYPE_BYTES = 64
_MAX_DIMS = 64

READ_WINDOW = 16 * 1024 * 1024  # largest single read used to gather a strided box
# A pread issued from Python costs about as much as reading ~16 KiB more from the page cache, so a strided
# region is read whole and gathered in memory when that costs at most this many file bytes per run.
GATHER_BYTES_PER_RUN = 8 * 1024
_CRC_CHUNK = 8 * 1024 * 1024
_WRITE_BUFFER = 1024 * 1024


def itemsize_of(dtype: str) -> int:
    """Bytes per element of a MindSpore tensor type; refusing unknown types keeps byte arithmetic exact."""
    size = ITEM_SIZES.get(dtype)
    if size is None:
        reason = _UNSUPPORTED_TYPES.get(dtype, "a tensor type mpitrans does not know")
        raise UnsupportedError(f"tensor type {dtype!r} is {reason}")
    return size


# ----------------------------------------------------------------------------------------------------------
# Index
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

    def _ensure(self, pos: int, n: int) -> None:
        if self.base <= pos and pos + n <= self.base + len(self.buf):
            return
        self.buf = _pread(self.fd, min(max(n, _HEADER_WINDOW), self.size - pos), pos, self.path)
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
        """Yield parsed tensor records, or ``(name, reason, offset)`` for values we cannot represent."""
        pos = 0
        while pos < end:
            field_no, wire_type, p = self.h.tag(pos, end)
            if (field_no, wire_type) != (1, LENGTH_DELIMITED):
                raise self.h.fail(f"expected a checkpoint record, found field {field_no} (wire type "
                                  f"{wire_type})", pos)
            length, p = self.h.length(p, end)
            yield self._value(pos, p, p + length)
            pos = p + length

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
        if length > _MAX_NAME_BYTES:
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
            if len(dims) > _MAX_DIMS:
                raise self.h.fail(f"tensor has more than {_MAX_DIMS} dimensions", pos, name)
            pos = p
        if dtype is None or content is None:
            raise self.h.fail("tensor lacks its type or its content", end, name)
        return tuple(dims), dtype, content[0], content[1]

    def _packed_dims(self, pos: int, end: int, dims: list[int]) -> int:
        while pos < end and len(dims) <= _MAX_DIMS:
            value, pos = self.h.varint(pos, end)
            dims.append(wire.to_int64(value))
        return end

    def _type_name(self, pos: int, length: int, name: str | None) -> str:
        raw = self.h.bytes(pos, min(length, _MAX_TYPE_BYTES + 1))
        text = raw.decode("ascii", errors="replace")
        if length > _MAX_TYPE_BYTES or not _TYPE_NAME.fullmatch(text):
            raise self.h.fail(f"tensor type {text[:_MAX_TYPE_BYTES]!r} is not a MindSpore type name",
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
        chunk = _pread(h.fd, min(_CRC_CHUNK, end - pos), pos, h.path)
        if not chunk:
            raise h.fail("file shrank while its CRC was being checked", pos)
        crc = zlib.crc32(chunk, crc)
        pos += len(chunk)
    if crc != stored:
        raise CheckpointFormatError(f"{h.path}: CRC mismatch (stored {stored:#x}, computed {crc:#x}); "
                                    f"the file is damaged")


def index_checkpoint(path: str | os.PathLike[str], *, verify_crc: bool = False,
                     skip_unsupported: bool = False) -> CheckpointIndex:
    """Map every tensor in a .ckpt to its byte ranges, reading headers only.

    ``verify_crc`` re-reads the whole file to check a CRC trailer when there is one (a file without a trailer
    passes, as with MindSpore). ``skip_unsupported`` lists string and MapTensor values in ``skipped`` instead
    of failing, for callers that only need the tensors around them.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: cannot open checkpoint: {exc.strerror}") from exc
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise CheckpointFormatError(f"{path}: file is empty, not a MindSpore checkpoint")
        h = _Header(fd, size, path)
        if h.bytes(0, min(4, size)) in _CIPHER_MAGICS:
            raise CheckpointFormatError(f"{path}: checkpoint is encrypted (saved with enc_key); decrypt it "
                                        f"with MindSpore first")
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
    return f"{_UNSUPPORTED_TYPES.get(rec.dtype, 'a tensor type mpitrans does not know')} (type {rec.dtype!r})"


# ----------------------------------------------------------------------------------------------------------
# Box reads
# ----------------------------------------------------------------------------------------------------------


class _Plan(NamedTuple):
    """A box as strided runs over the tensor's bytes: ``outer`` (count, stride) levels around a ``run``."""

    base: int
    run: int
    outer: tuple[tuple[int, int], ...]
    nbytes: int


def box_nbytes(entry: TensorEntry, box: Sequence[tuple[int, int]]) -> int:
    """Size of the C-order bytes ``read_box`` returns, so callers can size buffers without reading."""
    return _plan(entry, box).nbytes


def _check_box(entry: TensorEntry, box: Sequence[tuple[int, int]]) -> None:
    if len(box) != len(entry.shape):
        raise ValueError(f"box {box} has {len(box)} dims but {entry.name!r} has shape {entry.shape}")
    for (start, stop), dim in zip(box, entry.shape, strict=True):
        if not 0 <= start <= stop <= dim:
            raise ValueError(f"box {box} is outside {entry.name!r} of shape {entry.shape}")


def _plan(entry: TensorEntry, box: Sequence[tuple[int, int]]) -> _Plan:
    """Merge the box's dims into as few strided levels as possible so contiguous parts become single reads."""
    _check_box(entry, box)
    shape = entry.shape
    strides = [entry.itemsize] * len(shape)
    for k in range(len(shape) - 2, -1, -1):
        strides[k] = strides[k + 1] * shape[k + 1]
    counts = [stop - start for start, stop in box]
    base = sum(start * st for (start, _), st in zip(box, strides, strict=True))
    nbytes = prod(counts) * entry.itemsize
    if nbytes == 0:
        return _Plan(base, 0, (), 0)
    k = len(shape) - 1
    run = entry.itemsize
    while k >= 0 and counts[k] == shape[k]:  # trailing full dims are contiguous
        run *= shape[k]
        k -= 1
    if k >= 0:  # the first partial dim still yields contiguous runs
        run *= counts[k]
        k -= 1
    outer: list[tuple[int, int]] = []
    for j in range(k, -1, -1):  # innermost first, so merging looks at the level just inside
        if counts[j] == 1:
            continue
        if outer and outer[-1][0] * outer[-1][1] == strides[j]:  # the level inside spans one step here
            outer[-1] = (outer[-1][0] * counts[j], outer[-1][1])
        else:
            outer.append((counts[j], strides[j]))
    return _Plan(base, run, tuple(reversed(outer)), nbytes)


def read_box(source: str | os.PathLike[str] | int | BinaryIO, entry: TensorEntry,
             box: Sequence[tuple[int, int]]) -> bytearray:
    """The C-order bytes of ``box`` (one ``(start, stop)`` per dim of the full tensor) in a new buffer."""
    out = bytearray(_plan(entry, box).nbytes)
    if isinstance(source, int):
        read_box_into(source, entry, box, memoryview(out))
    elif isinstance(source, str | os.PathLike):
        fd = os.open(os.fspath(source), os.O_RDONLY)
        try:
            read_box_into(fd, entry, box, memoryview(out))
        finally:
            os.close(fd)
    else:
        read_box_into(source.fileno(), entry, box, memoryview(out))
    return out


def read_box_into(fd: int, entry: TensorEntry, box: Sequence[tuple[int, int]], out: memoryview) -> None:
    """Fill ``out`` with the C-order bytes of ``box``, reading only the file ranges the box covers.

    Contiguous parts arrive with one pread straight into ``out``. Strided parts whose runs are short next to
    their gaps get one pread per run; where runs are dense, a window is read whole and gathered with numpy,
    so a narrow column slice costs a few large reads rather than a syscall per row.
    """
    plan = _plan(entry, box)
    view = memoryview(out)
    if view.readonly:
        raise ValueError("read_box_into needs a writable buffer")
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    if len(view) != plan.nbytes:
        raise ValueError(f"buffer holds {len(view)} bytes but box {box} of {entry.name!r} "
                         f"needs {plan.nbytes}")
    if plan.nbytes:
        _Gather(fd, entry, plan, view).level(0, plan.base, 0)


class _Gather:
    def __init__(self, fd: int, entry: TensorEntry, plan: _Plan, out: memoryview) -> None:
        self.fd = fd
        self.entry = entry
        self.plan = plan
        self.out = out
        self.out_np = np.frombuffer(out, dtype=np.uint8)
        self.starts = [r.start for r in entry.records]
        self.temp: bytearray | None = None
        counts = [c for c, _ in plan.outer]
        # Per level: bytes one index fills in ``out``, and the span of the tensor it touches.
        self.slab_out = [plan.run * prod(counts[i + 1:]) for i in range(len(counts))]
        self.slab_span = [plan.run + sum((c - 1) * s for c, s in plan.outer[i + 1:])
                          for i in range(len(counts))]
        self.slab_runs = [prod(counts[i + 1:]) for i in range(len(counts))]

    def record_at(self, pos: int) -> Record:
        return self.entry.records[bisect.bisect_right(self.starts, pos) - 1]

    def level(self, lvl: int, base: int, dst: int) -> None:
        if lvl == len(self.plan.outer):
            self.run(base, self.plan.run, dst)
            return
        count, stride = self.plan.outer[lvl]
        span = self.slab_span[lvl]
        if stride > GATHER_BYTES_PER_RUN * self.slab_runs[lvl] or span > READ_WINDOW:
            for i in range(count):
                self.level(lvl + 1, base + i * stride, dst + i * self.slab_out[lvl])
            return
        i = 0
        while i < count:
            start = base + i * stride
            rec = self.record_at(start)
            limit = min(rec.start + rec.nbytes, start + READ_WINDOW) - start
            batch = min(count - i, (limit - span) // stride + 1) if limit >= span else 0
            if batch == 0:  # this slab straddles two records
                self.level(lvl + 1, start, dst + i * self.slab_out[lvl])
                i += 1
                continue
            self.window(lvl, rec, start, batch, dst + i * self.slab_out[lvl])
            i += batch

    def run(self, pos: int, n: int, dst: int) -> None:
        """A contiguous run of the tensor, split only where a record boundary cuts it."""
        while n:
            rec = self.record_at(pos)
            k = min(n, rec.start + rec.nbytes - pos)
            _pread_into(self.fd, self.out[dst:dst + k], rec.offset + pos - rec.start, self.entry)
            pos += k
            dst += k
            n -= k

    def window(self, lvl: int, rec: Record, start: int, batch: int, dst: int) -> None:
        stride = self.plan.outer[lvl][1]
        span = (batch - 1) * stride + self.slab_span[lvl]
        if self.temp is None or len(self.temp) < span:
            self.temp = bytearray(span)
        _pread_into(self.fd, memoryview(self.temp)[:span], rec.offset + start - rec.start, self.entry)
        levels = ((batch, stride),) + self.plan.outer[lvl + 1:]
        unit = _unit(self.plan.run, [s for _, s in levels])
        src = np.frombuffer(self.temp, dtype=unit, count=span // unit.itemsize)
        shape = tuple(c for c, _ in levels) + (self.plan.run // unit.itemsize,)
        gathered = as_strided(src, shape=shape, strides=tuple(s for _, s in levels) + (unit.itemsize,),
                              writeable=False)
        nbytes = batch * self.slab_out[lvl]
        np.copyto(self.out_np[dst:dst + nbytes].view(unit).reshape(shape), gathered)


def _unit(run: int, strides: list[int]) -> np.dtype:
    """Widest integer type that tiles every run and stride, so numpy copies words rather than bytes."""
    for size in (8, 4, 2):
        if run % size == 0 and all(s % size == 0 for s in strides):
            return np.dtype(f"u{size}")
    return np.dtype(np.uint8)


def _pread_into(fd: int, buf: memoryview, offset: int, entry: TensorEntry) -> None:
    done = 0
    while done < len(buf):
        try:
            n = os.preadv(fd, [buf[done:]], offset + done)
        except OSError as exc:
            raise CheckpointFormatError(f"{entry.path}: parameter {entry.name!r}: read failed at byte "
                                        f"{offset + done}: {exc.strerror}") from exc
        if n == 0:
            raise CheckpointFormatError(f"{entry.path}: parameter {entry.name!r}: file ends at byte "
                                        f"{offset + done}, inside the tensor (truncated since indexing?)")
        done += n


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def encode_record_header(name: str, dtype: str, shape: Sequence[int], content_bytes: int) -> bytes:
    """All of one record that precedes its ``content_bytes`` of tensor data, laid out as MindSpore does."""
    tag = name.encode("utf-8")
    tensor_head = b"".join(wire.encode_varint_field(1, d) for d in shape)
    tensor_head += wire.encode_bytes_field(2, dtype.encode("ascii"))
    tensor_len = len(tensor_head) + wire.length_field_size(3, content_bytes)
    value_len = wire.length_field_size(1, len(tag)) + wire.length_field_size(2, tensor_len)
    return b"".join((
        wire.encode_length_prefix(1, value_len),
        wire.encode_bytes_field(1, tag),
        wire.encode_length_prefix(2, tensor_len),
        tensor_head,
        wire.encode_length_prefix(3, content_bytes),
    ))


class _Open(NamedTuple):
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


class CheckpointWriter:
    """Streams tensors into a .ckpt byte-identical to ``mindspore.save_checkpoint`` for the same tensors.

    Data arrives in pieces, so a record's length prefix is computed from the shape before its bytes; the
    record cuts follow MindSpore's fixed ``RECORD_BYTES`` rule. The file appears under its final name only
    after a successful close (temp file, fsync, rename, directory fsync), so readers never see half a file.
    MindSpore writes nothing at all for a tensor with zero elements, and so do we.
    """

    def __init__(self, path: str | os.PathLike[str], *, crc_check: bool = False, checksum: bool = False) -> None:
        self.path = os.fspath(path)
        # CRC-32C of every byte written, for the job manifest (hardware-accelerated by the crc32c wheel).
        self.checksum: int | None = 0 if checksum else None
        self.size = 0
        folder, base = os.path.split(os.path.abspath(self.path))
        self._dir = folder
        self._tmp = os.path.join(folder, f".{base}.tmp-{os.getpid()}")
        self._record_bytes = RECORD_BYTES
        self._crc: int | None = 0 if crc_check else None
        self._names: set[str] = set()
        self._open: _Open | None = None
        self._written = 0  # bytes of the open tensor received so far
        self._record_end = 0  # tensor byte position where the current record's content ends
        self._published = False
        self._file: BinaryIO | None = open(self._tmp, "wb", buffering=_WRITE_BUFFER)

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def begin_tensor(self, name: str, dtype: str, shape: Sequence[int]) -> None:
        """Start a tensor whose ``prod(shape) * itemsize`` bytes follow through :meth:`write`."""
        self._check_open()
        self.end_tensor()
        itemsize = itemsize_of(dtype)
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape} of {name!r}")
        if name in self._names:
            raise ValueError(f"parameter {name!r} written twice to {self.path}")
        self._names.add(name)
        self._open = _Open(name, dtype, shape, prod(shape) * itemsize)
        self._written = 0
        self._record_end = 0

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Append the next C-order bytes of the open tensor, emitting record headers as boundaries pass."""
        cur = self._open
        if cur is None:
            raise ValueError("write() without begin_tensor()")
        view = _byte_view(data)
        if len(view) > cur.nbytes - self._written:
            raise ValueError(f"{cur.name!r}: {len(view)} bytes given but only {cur.nbytes - self._written} "
                             f"of its {cur.nbytes} remain")
        pos = 0
        while pos < len(view):
            if self._written == self._record_end:
                size = min(self._record_bytes, cur.nbytes - self._written)
                self._emit(encode_record_header(cur.name, cur.dtype, cur.shape, size))
                self._record_end = self._written + size
            k = min(len(view) - pos, self._record_end - self._written)
            self._emit(view[pos:pos + k])
            pos += k
            self._written += k

    def end_tensor(self) -> None:
        """Close the open tensor; refusing a short one keeps a missing chunk from becoming a corrupt file."""
        cur = self._open
        if cur is not None and self._written != cur.nbytes:
            raise ValueError(f"{cur.name!r}: only {self._written} of {cur.nbytes} bytes were written")
        self._open = None

    def write_tensor(self, name: str, dtype: str, shape: Sequence[int],
                     data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """A whole tensor at once, for callers that already hold it."""
        view = _byte_view(data)  # refuse unusable data before the tensor is opened
        self.begin_tensor(name, dtype, shape)
        self.write(view)
        self.end_tensor()

    def close(self) -> None:
        """Finish the file and publish it under its final name; on any failure nothing is published."""
        if self._file is None:
            return
        try:
            self.end_tensor()
            if self._crc is not None:
                self._file.write(CRC_MAGIC + self._crc.to_bytes(10, "big"))
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self._tmp, self.path)
            self._published = True
        except BaseException:
            self.abort()
            raise
        _fsync_dir(self._dir)

    def abort(self) -> None:
        """Drop the partial file; safe to call more than once, and a no-op once the file is published."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if not self._published:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)

    def _check_open(self) -> None:
        if self._file is None:
            raise ValueError(f"writer for {self.path} is already closed")

    def _emit(self, data: bytes | memoryview) -> None:
        self._check_open()
        assert self._file is not None
        self._file.write(data)
        self.size += len(data)
        if self._crc is not None:
            self._crc = zlib.crc32(data, self._crc)
        if self.checksum is not None:
            self.checksum = _crc32c(data, self.checksum)


def _crc32c(data: bytes | memoryview, value: int) -> int:
    import crc32c

    return crc32c.crc32c(data, value)


def file_crc32c(path: str | os.PathLike[str], block: int = 8 << 20) -> tuple[int, int]:
    """(size, CRC-32C) of a whole file, read in blocks: how the manifest checks a finished target."""
    value, size = 0, 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(block)
        view = memoryview(buf)
        while n := f.readinto(buf):
            value = _crc32c(view[:n], value)
            size += n
    return size, value


def _byte_view(data: bytes | bytearray | memoryview | np.ndarray) -> memoryview:
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            raise ValueError("tensor data must be C-contiguous")
        data = data.reshape(-1).view(np.uint8)
    view = memoryview(data)
    if not view.c_contiguous:
        raise ValueError("tensor data must be C-contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _fsync_dir(folder: str) -> None:
    """Make the rename durable; some filesystems refuse to open directories, which we tolerate."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
