"""Reading a box of a tensor from a `.ckpt` by byte ranges, without reading the rest of the file.

Tensor elements are opaque ``itemsize``-byte cells, so bfloat16 and every other type round-trip bit for bit.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from math import prod
from typing import BinaryIO, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from mpitrans.errors import CheckpointFormatError
from mpitrans.storage.base import contiguous_run
from mpitrans.storage.ckpt.index import Record, TensorEntry

READ_WINDOW = 16 * 1024 * 1024  # largest single read used to gather a strided box
# A pread issued from Python costs about as much as reading ~16 KiB more from the page cache, so a strided
# region is read whole and gathered in memory when that costs at most this many file bytes per run.
GATHER_BYTES_PER_RUN = 8 * 1024


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
    run = contiguous_run(box, entry.shape)
    if run is not None and len(entry.records) == 1 and (run[0] + run[1]) * entry.itemsize <= entry.records[0].nbytes:
        # One run inside one record (most boxes of a metadata-heavy job): a single pread, no plan.
        start, nbytes = run[0] * entry.itemsize, run[1] * entry.itemsize
        view = memoryview(out)
        if view.readonly or view.nbytes != nbytes:
            raise ValueError(f"read_box_into needs a writable buffer of {nbytes} bytes for box {box} of "
                             f"{entry.name!r}")
        if nbytes:
            _pread_into(fd, view.cast("B") if view.format != "B" or view.ndim != 1 else view,
                        entry.records[0].offset + start, entry)
        return
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


