"""The safetensors format, read by byte range and written as a stream, without the `safetensors` package.

A file is an 8-byte little-endian header length N, N bytes of JSON, then the data::

    {"__metadata__": {"format": "ms"}, "w": {"dtype": "BF16", "shape": [4, 8], "data_offsets": [0, 64]}, ...}

Offsets are relative to the end of the header. Reading validates what the Rust loader (the one MindSpore's
`transform_checkpoints` uses) validates, so a file mpitrans accepts is one MindSpore accepts, and a bad
one is refused as one line naming the file and tensor before any byte moves. Tensors are listed in data
order (that loader's order, and so the order in which MindSpore's transform meets them).

Writing reproduces `safetensors.numpy.save_file` byte for byte, which MindSpore calls for every
safetensors it saves: tensors laid out by descending dtype (the Rust `Dtype` enum's order) then name, a
compact JSON header in that order padded with spaces to a multiple of 8 bytes. The header comes first,
computed from the target's tensor list, so data streams straight after it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from mpitrans.errors import CheckpointFormatError, MpitransError, UnsupportedError
from mpitrans.metadata import TensorMeta, itemsize
from mpitrans.storage import checksum
from mpitrans.storage.base import AtomicFile, Box, Published, TensorStream
from mpitrans.storage.ckpt.boxread import read_box_into
from mpitrans.storage.ckpt.index import Record, TensorEntry

LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100_000_000  # MindSpore's and the Rust loader's limit
MINDSPORE_METADATA = {"format": "ms"}  # what MindSpore's transform writes into every target's header

# safetensors dtype names -> mpitrans' neutral names, in the Rust `Dtype` enum's order (save_file lays
# tensors out by descending position here, then by name).
TO_NEUTRAL: dict[str, str] = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "F16": "float16",
    "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32", "F64": "float64",
    "I64": "int64", "U64": "uint64",
}
FROM_NEUTRAL: dict[str, str] = {v: k for k, v in TO_NEUTRAL.items()}
_RANK = {name: i for i, name in enumerate(TO_NEUTRAL)}


class Slot(NamedTuple):
    """One tensor of a safetensors file: where its bytes lie, relative to the data section."""

    meta: TensorMeta
    start: int
    stop: int


# ---------------------------------------------------------------------------------------------- reading


def read_header(path: str, fd: int) -> tuple[int, list[Slot], dict | None]:
    """(data section offset, tensors in data order, __metadata__) of an open file, fully validated."""
    size = os.fstat(fd).st_size
    if size < LENGTH_BYTES:
        raise CheckpointFormatError(f"{path}: truncated safetensors file ({size} bytes; the header length "
                                    f"alone takes {LENGTH_BYTES})")
    n = int.from_bytes(os.pread(fd, LENGTH_BYTES, 0), "little")
    if n > MAX_HEADER_BYTES:
        raise CheckpointFormatError(f"{path}: safetensors header length {n} is above the {MAX_HEADER_BYTES}-byte "
                                    f"limit (not a safetensors file, or corrupt)")
    if LENGTH_BYTES + n > size:
        raise CheckpointFormatError(f"{path}: truncated safetensors header (it announces {n} bytes; the file "
                                    f"holds {size - LENGTH_BYTES} after the length)")
    raw = os.pread(fd, n, LENGTH_BYTES)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(f"{path}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise CheckpointFormatError(f"{path}: safetensors __metadata__ must map names to strings")
    slots = sorted((_slot(path, name, info) for name, info in header.items()), key=lambda s: (s.start, s.stop))
    _check_layout(path, slots, size - LENGTH_BYTES - n)
    return LENGTH_BYTES + n, slots, metadata


def _slot(path: str, name: str, info: object) -> Slot:
    """One header entry, refused unless its dtype, shape and offsets agree with each other."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise CheckpointFormatError(f"{where}: header entry needs dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in TO_NEUTRAL:
        raise UnsupportedError(f"{where}: safetensors dtype {dtype!r} is not one mpitrans reads "
                               f"(known: {', '.join(TO_NEUTRAL)})")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CheckpointFormatError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]):
        raise CheckpointFormatError(f"{where}: data_offsets {offsets!r} is not a [start, stop] pair")
    meta = TensorMeta(name, TO_NEUTRAL[dtype], tuple(shape))
    if offsets[1] - offsets[0] != meta.nbytes:
        raise CheckpointFormatError(
            f"{where}: the header says {dtype} of shape {tuple(shape)} ({meta.nbytes} bytes) but its "
            f"data_offsets {offsets} span {offsets[1] - offsets[0]} bytes (a header that lies about the dtype "
            f"or shape)")
    return Slot(meta, offsets[0], offsets[1])


def _check_layout(path: str, slots: Sequence[Slot], data_bytes: int) -> None:
    """Tensors must tile the data section exactly (the Rust loader's rule): no overlap, gap, or overrun."""
    pos = 0
    for s in slots:
        if s.stop > data_bytes:
            raise CheckpointFormatError(f"{path}: tensor {s.meta.name!r}: data_offsets [{s.start}, {s.stop}] "
                                        f"run past the end of the data ({data_bytes} bytes; truncated file?)")
        if s.start != pos:
            how = "overlaps the tensor before it" if s.start < pos else f"leaves a gap after byte {pos}"
            raise CheckpointFormatError(f"{path}: tensor {s.meta.name!r}: data_offsets [{s.start}, {s.stop}] "
                                        f"{how} (corrupt header)")
        pos = s.stop
    if pos != data_bytes:
        raise CheckpointFormatError(f"{path}: {data_bytes - pos} bytes after the last tensor that the header "
                                    f"does not describe (corrupt header)")


class SafetensorsSource:
    """A `SourceReader` for `.safetensors`: the header is parsed on open (or handed over as a peer's
    `export_index()`); boxes are read by byte range, the file opened on the first read."""

    def __init__(self, path: str, index: bytes | None = None) -> None:
        self.path = path
        self._fd = -1
        if index is None:
            fd = os.open(path, os.O_RDONLY)
            try:
                self._base, slots, self.metadata = read_header(path, fd)
            finally:
                os.close(fd)
        else:
            try:
                self._base, raw, self.metadata = json.loads(index)
                slots = [Slot(TensorMeta(n, d, tuple(shape)), a, b) for n, d, shape, a, b in raw]
            except (ValueError, TypeError) as exc:
                raise CheckpointFormatError(f"{path}: damaged index received from a peer ({exc})") from None
        self._slots = slots
        self._entries = {s.meta.name: TensorEntry(s.meta.name, s.meta.dtype, s.meta.shape, itemsize(s.meta.dtype),
                                                  (Record(self._base + s.start, s.stop - s.start, 0),), path)
                         for s in slots}

    def export_index(self) -> bytes:
        raw = [[s.meta.name, s.meta.dtype, list(s.meta.shape), s.start, s.stop] for s in self._slots]
        return json.dumps([self._base, raw, self.metadata], separators=(",", ":")).encode()

    def tensors(self) -> list[TensorMeta]:
        return [s.meta for s in self._slots]

    def read_box(self, name: str, box: Box, out: memoryview) -> None:
        entry = self._entries.get(name)
        if entry is None:
            raise MpitransError(f"{self.path}: parameter {name!r} is not in this file")
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDONLY)
        read_box_into(self._fd, entry, box, out)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# ---------------------------------------------------------------------------------------------- writing


def file_order(tensors: Sequence[TensorMeta]) -> list[TensorMeta]:
    """save_file's layout: descending dtype (Rust enum order), then name (bytewise, as Rust compares)."""
    return sorted(tensors, key=lambda t: (-_RANK[FROM_NEUTRAL[t.dtype]], t.name.encode("utf-8")))


def encode_header(tensors: Sequence[TensorMeta], metadata: Mapping[str, str] | None) -> tuple[bytes, list[Slot]]:
    """The header bytes (length prefix included) save_file writes for `tensors`, and their slots."""
    doc: dict[str, object] = {}
    if metadata is not None:
        doc["__metadata__"] = dict(metadata)
    slots, pos = [], 0
    for t in file_order(tensors):
        if t.name in doc:
            raise MpitransError(f"parameter {t.name!r} appears twice in one target")
        doc[t.name] = {"dtype": FROM_NEUTRAL[t.dtype], "shape": list(t.shape), "data_offsets": [pos, pos + t.nbytes]}
        slots.append(Slot(t, pos, pos + t.nbytes))
        pos += t.nbytes
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(LENGTH_BYTES, "little") + text, slots


class SafetensorsTarget:
    """A `TargetWriter` for `.safetensors`, byte-identical to MindSpore's save for the same tensors.

    The job streams tensors in its plan's order, which need not be the file's (dtype, name) order: each
    tensor's bytes go to the place the header gave it. The CRC-32C runs along while bytes arrive in file
    order; if they did not, the finished file is read back once to compute it."""

    def __init__(self, path: str, tensors: Sequence[TensorMeta],
                 metadata: Mapping[str, str] | None = MINDSPORE_METADATA) -> None:
        self.path = path
        header, slots = encode_header(tensors, metadata)
        self._base = len(header)
        self._place = {s.meta.name: s.start for s in slots}
        self.size = self._base + (slots[-1].stop if slots else 0)
        self._out = AtomicFile(path)
        self._crc: int | None = 0  # None once bytes arrived out of file order
        self._pos = 0  # where the file's sequential write position is
        self._at = 0  # file position of the open tensor's next byte
        self._stream = TensorStream(path, tensors, self._begin, self._piece)
        self._emit(0, header)

    def _begin(self, t: TensorMeta) -> None:
        self._at = self._base + self._place[t.name]

    def _piece(self, data: memoryview) -> None:
        self._emit(self._at, data)
        self._at += len(data)

    def write(self, data: memoryview) -> None:
        self._stream.write(data)

    def _emit(self, at: int, data: bytes | memoryview) -> None:
        f = self._out.file
        if f is None:
            raise ValueError(f"writer for {self.path} is already closed")
        if at != self._pos:
            f.seek(at)
            self._crc = None
        f.write(data)
        self._pos = at + len(data)
        if self._crc is not None:
            self._crc = checksum.crc32c(data, self._crc)

    def commit(self) -> Published:
        """Publish only when every tensor got all its bytes: a short target is an error, never a file."""
        missing = self._stream.missing()
        if missing is not None:
            self._out.abort()
            raise MpitransError(f"{self.path}: incomplete (parameter {missing!r} and later got no bytes); "
                                f"not published")
        crc = self._crc
        if crc is None:
            assert self._out.file is not None
            self._out.file.flush()
            crc = checksum.file_crc32c(self._out.tmp)[1]
        self._out.commit()
        return Published(self.path, self.size, crc)

    def abort(self) -> None:
        self._out.abort()
