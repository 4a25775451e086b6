"""A `.ckpt` source file as the job sees it (a `SourceReader`): its tensors, and boxes of them by byte range.

The index (every tensor's records) can travel: the process that indexed a file exports it, and a process
that reads the file later is handed the export instead of indexing the file again.
"""

from __future__ import annotations

import logging
import marshal
import os
from functools import lru_cache
from typing import NamedTuple

from mpitrans.errors import CheckpointFormatError, MpitransError
from mpitrans.metadata import TensorMeta
from mpitrans.storage.base import Box
from mpitrans.storage.ckpt.boxread import read_box_into
from mpitrans.storage.ckpt.crypto import CkptReading
from mpitrans.storage.ckpt.format import ITEM_SIZES, TO_NEUTRAL
from mpitrans.storage.ckpt.index import CheckpointIndex, Record, TensorEntry, index_checkpoint

log = logging.getLogger("mpitrans")


def tensors_of(index: CheckpointIndex) -> list[TensorMeta]:
    """The index's tensors in file order, with format-neutral dtype names."""
    return [TensorMeta(e.name, TO_NEUTRAL[e.dtype], tuple(e.shape)) for e in index.entries]


_EXPORT_VERSION = 1


def export_index(index: CheckpointIndex) -> bytes:
    """The index, marshal-encoded and without the path: replicas of one layout export identical bytes, and a
    peer decodes it in a few milliseconds (it never holds tensor data, and only peers of the job read it)."""
    entries = tuple((e.name, e.dtype, tuple(e.shape), tuple(tuple(r) for r in e.records)) for e in index.entries)
    return marshal.dumps((_EXPORT_VERSION, index.size, index.crc, entries))


class _Parsed(NamedTuple):
    """A decoded export, shared by every file that exported the same bytes (replicas, twins of a class)."""

    size: int
    crc: int | None
    specs: dict[str, tuple[str, tuple[int, ...], tuple[Record, ...]]]  # name -> (dtype, shape, records)
    metas: tuple[TensorMeta, ...]


@lru_cache(maxsize=16)
def _parse_export(data: bytes) -> _Parsed:
    version, size, crc, raw = marshal.loads(data)
    if version != _EXPORT_VERSION:
        raise ValueError(f"index format {version}, expected {_EXPORT_VERSION}")
    specs = {name: (dtype, tuple(shape), tuple(Record(*r) for r in records)) for name, dtype, shape, records in raw}
    metas = tuple(TensorMeta(name, TO_NEUTRAL[dtype], tuple(shape)) for name, dtype, shape, _ in raw)
    if len(specs) != len(metas):
        raise ValueError("a parameter is listed twice")
    return _Parsed(size, crc, specs, metas)


def _parsed_or_fail(path: str, data: bytes) -> _Parsed:
    try:
        return _parse_export(data)
    except (ValueError, TypeError, KeyError, EOFError) as exc:
        raise CheckpointFormatError(f"{path}: damaged index received from a peer ({exc})") from None


# Files up to this size, holding many small tensors (where parsing records costs more than reading the
# file), are compared whole to find structural twins.
TWIN_BYTES = 64 << 20
TWIN_BYTES_PER_TENSOR = 16 << 10


def _read_whole(path: str, size: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(size + 1)
    if len(data) != size:
        raise OSError(f"{path} changed size")
    return data


def _content_ranges(parsed: _Parsed) -> list[tuple[int, int]]:
    """(offset, nbytes) of every tensor content record, in file order."""
    return sorted((r.offset, r.nbytes) for _, _, records in parsed.specs.values() for r in records)


def _non_content(data: bytes, ranges: list[tuple[int, int]]) -> bytes:
    """The bytes outside the content `ranges`, joined in file order."""
    view = memoryview(data)
    parts, pos = [], 0
    for offset, nbytes in ranges:
        parts.append(view[pos:offset])
        pos = offset + nbytes
    parts.append(view[pos:])
    return b"".join(parts)


class CkptSource:
    """Indexed on open (headers only) unless handed an exported index; the file is opened on the first
    read, so a process that only plans with the index need not see the file at all. A handed-over export
    is decoded once per distinct content, and a tensor's entry is built on its first read.

    `reading` says whether indexing also checks the file's CRC (the whole file is read once, so only the
    indexing process does it) and how to open an encrypted file (its decrypted private copy is indexed and
    read; messages still name the file itself)."""

    def __init__(self, path: str, index: bytes | None = None, reading: CkptReading | None = None) -> None:
        self.path = path
        self.reading = reading or CkptReading()
        if index is None:
            found = index_checkpoint(self.reading.plain_path(path), verify_crc=self.reading.crc_check, name=path)
            if self.reading.crc_check and found.crc is None:
                log.warning("%s: --crc-check: the file has no CRC (it was not saved with crc_check=True); "
                            "read without checking", path)
            index = export_index(found)
        self._blob = index
        self._parsed = _parsed_or_fail(path, index)
        self._entries: dict[str, TensorEntry] = {}
        # once `twin` was asked: the content records' ranges, and every byte outside them
        self._headers: tuple[list[tuple[int, int]], bytes] | None = None
        self._fd = -1

    @property
    def index(self) -> CheckpointIndex:
        """The whole index (for tools and tests; the job reads through `entry`)."""
        return CheckpointIndex(self.path, self._parsed.size, [self.entry(m.name) for m in self._parsed.metas],
                               self._parsed.crc)

    def tensors(self) -> list[TensorMeta]:
        return list(self._parsed.metas)

    def twin(self, path: str) -> CkptSource | None:
        """`path` opened with this file's index when it is a structural twin of this file, else None.

        Data-parallel replicas and optimizer shards of one layout class are laid out byte for byte alike
        except for tensor contents, and an index depends on the other bytes only (records are found by
        their headers, contents skipped by length). So a file of the same size whose every non-content
        byte (headers, and the CRC trailer if any) equals this file's has this file's index: one read
        and a comparison instead of parsing thousands of records. Small plain files only (the whole file
        is read); with `--crc-check`, or an encrypted file, the caller indexes it as usual."""
        size = self._parsed.size
        if (self.reading.crc_check or self.reading.key is not None or size > TWIN_BYTES
                or size > TWIN_BYTES_PER_TENSOR * max(len(self._parsed.specs), 1)):
            return None
        try:
            if os.path.getsize(path) != size:
                return None
            if self._headers is None:
                ranges = _content_ranges(self._parsed)
                self._headers = (ranges, _non_content(_read_whole(self.path, size), ranges))
            ranges, headers = self._headers
            if _non_content(_read_whole(path, size), ranges) != headers:
                return None
        except OSError:
            return None
        return CkptSource(path, self._blob, self.reading)

    def export_index(self) -> bytes:
        return self._blob

    def entry(self, name: str) -> TensorEntry:
        entry = self._entries.get(name)
        if entry is None:
            spec = self._parsed.specs.get(name)
            if spec is None:
                raise MpitransError(f"{self.path}: parameter {name!r} is not in this file")
            dtype, shape, records = spec
            entry = self._entries[name] = TensorEntry(name, dtype, shape, ITEM_SIZES[dtype], records, self.path)
        return entry

    def read_box(self, name: str, box: Box, out: memoryview) -> None:
        if self._fd < 0:
            self._fd = os.open(self.reading.plain_path(self.path), os.O_RDONLY)
            if os.fstat(self._fd).st_size != self._parsed.size:
                raise CheckpointFormatError(f"{self.path}: the file changed size since it was indexed "
                                            f"({os.fstat(self._fd).st_size} bytes, indexed {self._parsed.size})")
        read_box_into(self._fd, self.entry(name), box, out)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
