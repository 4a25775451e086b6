"""A `.ckpt` source file as the job sees it (a `SourceReader`): its tensors, and boxes of them by byte range."""

from __future__ import annotations

import os

from mpitrans.errors import MpitransError
from mpitrans.metadata import TensorMeta
from mpitrans.storage.base import Box
from mpitrans.storage.ckpt.boxread import read_box_into
from mpitrans.storage.ckpt.format import TO_NEUTRAL
from mpitrans.storage.ckpt.index import CheckpointIndex, TensorEntry, index_checkpoint


def tensors_of(index: CheckpointIndex) -> list[TensorMeta]:
    """The index's tensors in file order, with format-neutral dtype names."""
    return [TensorMeta(e.name, TO_NEUTRAL[e.dtype], tuple(e.shape)) for e in index.entries]


class CkptSource:
    """Indexed on open (headers only); the file stays open for box reads until `close`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.index = index_checkpoint(path)
        self._fd = os.open(path, os.O_RDONLY)

    def tensors(self) -> list[TensorMeta]:
        return tensors_of(self.index)

    def entry(self, name: str) -> TensorEntry:
        entry = self.index.get(name)
        if entry is None:
            raise MpitransError(f"{self.path}: parameter {name!r} is not in this file")
        return entry

    def read_box(self, name: str, box: Box, out: memoryview) -> None:
        read_box_into(self._fd, self.entry(name), box, out)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
