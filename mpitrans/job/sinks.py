"""Where assembled chunks go: a background thread that consumes them while the next round moves bytes.

`ChunkSink` is the thread and its failure discipline; `DiskWriter` streams chunks into target files
through the storage layer (`verify` has a sink that compares instead). The main thread ends the stream
with END after the last round, or ABORT when it gives up. Only END publishes what is still open: on
ABORT, or on any error in the sink, the target in progress is dropped (its temporary file removed) and
nothing more is published or recorded. A failed sink keeps draining the queue, so the main thread never
blocks on it, and stops as soon as it has seen END or ABORT, so it never waits for a message that will
not come.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

from mpitrans.errors import MpitransError
from mpitrans.job.faults import fault_point
from mpitrans.job.lora import LoraMerger
from mpitrans.metadata import TensorMeta, itemsize
from mpitrans.plan.planner import TargetPlan
from mpitrans.plan.schedule import Chunk
from mpitrans.storage.base import TargetWriter
from mpitrans.storage.ckpt.crypto import CkptWriting
from mpitrans.storage.formats import Format, format_of_path

END = "end"
ABORT = "abort"


class _Aborted(Exception):
    """The main thread gave up: drop what is open, publish nothing more."""


class ChunkSink(threading.Thread):
    """Consumes (chunk, buffer) items from `queue`; buffers come back through `free` for reuse, so at
    most three chunk buffers exist (one filling, two queued)."""

    def __init__(self, name: str, chunk_hint: int = 0) -> None:
        super().__init__(name=name, daemon=True)
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.free: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.chunk_hint = chunk_hint

    def take_buffer(self, nbytes: int) -> memoryview:
        """A chunk buffer of exactly `nbytes` (a view of a recycled, possibly larger one)."""
        try:
            buf = self.free.get_nowait()
        except queue.Empty:
            buf = None
        base = buf.obj if isinstance(buf, memoryview) else buf
        if base is None or len(base) < nbytes:
            base = bytearray(max(nbytes, self.chunk_hint))
        return memoryview(base)[:nbytes]

    def run(self) -> None:
        ended = False
        try:
            while True:
                item = self.queue.get()
                if item is END or item is ABORT:
                    ended = True
                    if item is ABORT:
                        raise _Aborted
                    break
                chunk, buf = item
                self.consume(chunk, memoryview(buf))
                self.free.put(buf)
            self.finish()
        except BaseException as exc:  # reported by the main thread
            if not isinstance(exc, _Aborted):
                self.error = self.describe(exc)
            self.drop()
            while not ended:
                item = self.queue.get()
                ended = item is END or item is ABORT
        finally:
            self.close()

    # Hooks for subclasses.
    def consume(self, chunk: Chunk, view: memoryview) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """After END: complete what is open."""

    def drop(self) -> None:
        """After ABORT or an error: abandon what is open."""

    def close(self) -> None:
        """Always, last: release resources."""

    def describe(self, exc: BaseException) -> BaseException:
        return exc


class DiskWriter(ChunkSink):
    """Writes this process's targets, one open `TargetWriter` at a time; `on_done(target, size, crc)`
    runs after each target is published (renamed and its directory fsynced)."""

    def __init__(self, targets: list[TargetPlan], path_of: Callable[[TargetPlan], str], chunk_hint: int,
                 rank: int, fmt: Format | None = None, writing: CkptWriting | None = None) -> None:
        super().__init__("mpitrans-writer", chunk_hint)
        self.targets = targets
        self.path_of = path_of
        self.fmt = fmt  # None: each target's format follows its file name's suffix
        self.rank = rank
        self.writing = writing  # .ckpt targets: CRC trailer, encryption
        self.bytes_written = 0
        self.results: dict[int, tuple[str, int, int]] = {}  # target -> (path, size, crc32c)
        self.on_done: Callable[[int, int, int], None] | None = None
        self._current: TargetWriter | None = None
        self._index = -1
        self._opened: set[int] = set()
        self._lora = LoraMerger()

    def consume(self, chunk: Chunk, view: memoryview) -> None:
        for seg in chunk.segments:
            if seg.target_index != self._index:
                self._publish_current()
                self._current = self._open(seg.target_index)
            tensor = self.targets[seg.target_index].tensors[seg.tensor_index]
            n = (seg.stop - seg.start) * itemsize(tensor.dtype)
            data = view[seg.chunk_offset:seg.chunk_offset + n]
            if tensor.role:  # a LoRA factor slice: kept for the weight that follows, never written
                self._lora.take(tensor, seg.start, data)
                continue
            if tensor.lora_scaling is not None:
                data = memoryview(self._lora.merge(tensor, seg.start, seg.stop, data))
            self._current.write(data)
            self.bytes_written += n
            fault_point("mid-write", self.rank)

    def finish(self) -> None:
        self._publish_current()
        for i in range(len(self.targets)):
            if i not in self._opened:  # a target with no tensors still gets its (empty) file
                self._current = self._open(i)
                self._publish_current()

    def drop(self) -> None:
        if self._current is not None:
            self._current.abort()
            self._current = None

    def describe(self, exc: BaseException) -> BaseException:
        if isinstance(exc, OSError):
            where = exc.filename or (self._current.path if self._current is not None else "a target")
            return MpitransError(f"writing {where} failed: {exc.strerror or exc}")
        return exc

    def _open(self, index: int) -> TargetWriter:
        target = self.targets[index]
        path = self.path_of(target)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._index = index
        self._opened.add(index)
        fmt = self.fmt or format_of_path(path)
        return fmt.open_target(path, [TensorMeta(x.name, x.dtype, x.shape) for x in target.tensors
                                      if x.written], self.writing)

    def _publish_current(self) -> None:
        writer = self._current
        if writer is None:
            return
        done = writer.commit()  # refuses (and removes) a target that did not get every byte
        self._current = None
        target = self.targets[self._index].rank
        self.results[target] = (done.path, done.size, done.crc32c)
        if self.on_done is not None:
            self.on_done(target, done.size, done.crc32c)
