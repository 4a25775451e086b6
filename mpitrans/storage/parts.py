"""A rank directory of `_part` files read as one source: what `mindspore.load_segmented_checkpoints` does.

A per-stage conversion (`transform_checkpoints` with one stage's strategy file) writes
`rank_x/{prefix}x_part{stage}.ckpt`, one file per pipeline stage; together they are that rank's whole
checkpoint. MindSpore's resharding would take only the last file of such a directory, so mpitrans reads
the union instead: the directory is the source's path, and this reader lists the parts' tensors in part
order and sends each read to the file that holds the tensor.

A name held by two parts is taken from the later part, as `load_segmented_checkpoints` (a dict update
per file) keeps the last copy it loads; pipeline-shared parameters (tied embeddings) legitimately appear
in two stages. Copies that differ in dtype or shape cannot both be right and stop the job, naming both
files.
"""

from __future__ import annotations

import logging
import marshal
import os
import re

from mpitrans.errors import MpitransError
from mpitrans.metadata import TensorMeta
from mpitrans.storage.base import Box, SourceReader

log = logging.getLogger("mpitrans")

_PART = re.compile(r"^(?P<stem>.+)_part(?P<n>\d+)(?P<suffix>\.[a-z]+)$")


def part_set(names: list[str]) -> list[str] | None:
    """`names` (files of one rank directory, one format) in part order when they are two or more `_part`
    files of one stem (`checkpoint_0_part0.ckpt`, `checkpoint_0_part1.ckpt`), else None."""
    matches = [_PART.match(n) for n in names]
    if len(names) < 2 or not all(matches):
        return None
    if len({(m["stem"], m["suffix"]) for m in matches if m}) != 1:
        return None
    return [m.string for m in sorted((m for m in matches if m), key=lambda m: int(m["n"]))]


def part_files(rank_dir: str) -> list[str]:
    """The `_part` files a rank directory stands for, as paths in part order."""
    names = sorted(f for f in os.listdir(rank_dir) if _PART.match(f) and os.path.isfile(os.path.join(rank_dir, f)))
    by_suffix: dict[str, list[str]] = {}
    for f in names:
        by_suffix.setdefault(os.path.splitext(f)[1], []).append(f)
    ordered = next((part_set(fs) for fs in by_suffix.values() if part_set(fs)), None)
    if not ordered:
        raise MpitransError(f"{rank_dir}: expected two or more _part files of one checkpoint (e.g. "
                            f"checkpoint_0_part0.ckpt, checkpoint_0_part1.ckpt); found {', '.join(names) or 'none'}")
    return [os.path.join(rank_dir, f) for f in ordered]


def source_size(path: str) -> int:
    """Bytes of a source: the file's, or the sum of a part directory's files."""
    if os.path.isdir(path):
        return sum(os.path.getsize(p) for p in part_files(path))
    return os.path.getsize(path)


class PartsSource:
    """The `_part` files of one rank directory as one `SourceReader` (see the module docstring)."""

    def __init__(self, path: str, index: bytes | None = None) -> None:
        from mpitrans.storage.formats import open_source

        self.path = path
        self._open = open_source
        self._readers: dict[int, SourceReader] = {}
        if index is None:
            self.files = part_files(path)
            self._indexes = [self._index_of(i) for i in range(len(self.files))]
            log.info("%s: %d _part files (%s) read as one source", path, len(self.files),
                     ", ".join(os.path.basename(f) for f in self.files))
        else:
            try:
                names, indexes = marshal.loads(index)
                self._indexes = list(indexes)
            except (ValueError, TypeError, EOFError) as exc:
                raise MpitransError(f"{path}: damaged index of its _part files received from a peer ({exc})") from None
            self.files = [os.path.join(path, n) for n in names]
        self._tensors, self._owner = self._union(warn=index is None)

    def _index_of(self, i: int) -> bytes:
        reader = self._open(self.files[i])
        self._readers[i] = reader
        return reader.export_index()

    def _union(self, warn: bool) -> tuple[list[TensorMeta], dict[str, int]]:
        """Tensors in part order, each name once (at its first place), and which part supplies it (the last
        holding it)."""
        order: dict[str, TensorMeta] = {}
        owner: dict[str, int] = {}
        for i, blob in enumerate(self._indexes):
            for meta in self._open(self.files[i], blob).tensors():
                if meta.name in owner:
                    self._duplicate(meta, order[meta.name], owner[meta.name], i, warn)
                order.setdefault(meta.name, meta)
                owner[meta.name] = i
        return list(order.values()), owner

    def _duplicate(self, meta: TensorMeta, first: TensorMeta, a: int, b: int, warn: bool) -> None:
        fa, fb = self.files[a], self.files[b]
        if (meta.dtype, meta.shape) != (first.dtype, first.shape):
            raise MpitransError(
                f"parameter {meta.name!r} is in two _part files of one rank with different dtype/shape: {fa} "
                f"({first.dtype} {list(first.shape)}) and {fb} ({meta.dtype} {list(meta.shape)}); remove the "
                f"stale file (parts of one rank must come from one conversion)")
        if warn:
            log.warning("parameter %r is in two _part files of one rank, %s and %s: using the copy in %s (as "
                        "mindspore.load_segmented_checkpoints keeps the last file's)", meta.name, fa, fb, fb)

    def tensors(self) -> list[TensorMeta]:
        return list(self._tensors)

    def export_index(self) -> bytes:
        names = [os.path.basename(f) for f in self.files]
        # Each part's export is opaque bytes of its own format: marshal carries them as they are.
        return marshal.dumps((names, tuple(self._indexes)))

    def read_box(self, name: str, box: Box, out: memoryview) -> None:
        i = self._owner.get(name)
        if i is None:
            raise MpitransError(f"{self.path}: parameter {name!r} is in none of its _part files")
        reader = self._readers.get(i)
        if reader is None:
            reader = self._readers[i] = self._open(self.files[i], self._indexes[i])
        reader.read_box(name, box, out)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
