"""A `.ckpt` source file as the job sees it (a `SourceReader`): its tensors, and boxes of them by byte range.

The index (every tensor's records) can travel: the process that indexed a file exports it, and a process
that reads the file later is handed the export instead of indexing the file again.
"""

from __future__ import annotations

import json
import logging
import os

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


def export_index(index: CheckpointIndex) -> bytes:
    """The index as compact JSON, without the path (replicas of one layout export identical bytes)."""
    entries = [[e.name, e.dtype, list(e.shape), [list(r) for r in e.records]] for e in index.entries]
    return json.dumps([index.size, index.crc, entries], separators=(",", ":")).encode()


def import_index(path: str, data: bytes) -> CheckpointIndex:
    try:
        size, crc, raw = json.loads(data)
        entries = [TensorEntry(name, dtype, tuple(shape), ITEM_SIZES[dtype], tuple(Record(*r) for r in records),
                               path) for name, dtype, shape, records in raw]
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointFormatError(f"{path}: damaged index received from a peer ({exc})") from None
    return CheckpointIndex(path, size, entries, crc)


class CkptSource:
    """Indexed on open (headers only) unless handed an exported index; the file is opened on the first
    read, so a process that only plans with the index need not see the file at all.

    `reading` says whether indexing also checks the file's CRC (the whole file is read once, so only the
    indexing process does it) and how to open an encrypted file (its decrypted private copy is indexed and
    read; messages still name the file itself)."""

    def __init__(self, path: str, index: bytes | None = None, reading: CkptReading | None = None) -> None:
        self.path = path
        self.reading = reading or CkptReading()
        if index is None:
            self.index = index_checkpoint(self.reading.plain_path(path), verify_crc=self.reading.crc_check,
                                          name=path)
            if self.reading.crc_check and self.index.crc is None:
                log.warning("%s: --crc-check: the file has no CRC (it was not saved with crc_check=True); "
                            "read without checking", path)
        else:
            self.index = import_index(path, index)
        self._fd = -1

    def tensors(self) -> list[TensorMeta]:
        return tensors_of(self.index)

    def export_index(self) -> bytes:
        return export_index(self.index)

    def entry(self, name: str) -> TensorEntry:
        entry = self.index.get(name)
        if entry is None:
            raise MpitransError(f"{self.path}: parameter {name!r} is not in this file")
        return entry

    def read_box(self, name: str, box: Box, out: memoryview) -> None:
        if self._fd < 0:
            self._fd = os.open(self.reading.plain_path(self.path), os.O_RDONLY)
            if os.fstat(self._fd).st_size != self.index.size:
                raise CheckpointFormatError(f"{self.path}: the file changed size since it was indexed "
                                            f"({os.fstat(self._fd).st_size} bytes, indexed {self.index.size})")
        read_box_into(self._fd, self.entry(name), box, out)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
