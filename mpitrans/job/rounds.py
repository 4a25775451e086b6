"""Moving the planned bytes: every process runs the same rounds of reads, sends and writes.

Each writer's output is cut into chunks (`plan.schedule`); in round k every writer assembles its k-th
chunk. A round on one process: post receives for the pieces others read for it, read its own pieces
(straight into the chunk where contiguous), read and pack the pieces other writers need from it, exchange
everything point to point in one `Waitall`, scatter what arrived, and hand the chunk to the sink thread.
A region wanted twice in one round is read from disk once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from math import prod

from mpitrans.job.assemble import scatter, target_view
from mpitrans.job.faults import fault_point, round_delay
from mpitrans.job.progress import Progress
from mpitrans.job.sinks import ABORT, END, ChunkSink, DiskWriter
from mpitrans.job.sources import SourceFiles
from mpitrans.job.summary import RankStats
from mpitrans.job.transport import Transport
from mpitrans.metadata import TensorMeta, itemsize
from mpitrans.plan.assign import ReaderTable, assign_readers
from mpitrans.plan.planner import TargetPlan
from mpitrans.plan.schedule import Chunk, Piece, build_chunks


@dataclass
class Moves:
    """What a byte-moving phase needs to know, identical on every process."""

    plans: dict[int, TargetPlan]
    placement: dict[int, int]  # target rank -> MPI rank that assembles it
    seers: Mapping[int, list[int]]  # source rank -> MPI ranks that see its file
    visible: dict[int, str]  # source rank -> path on this process
    metas: dict[int, list[TensorMeta]]
    file_ids: Mapping[int, Mapping[int, tuple]]

    def readers(self) -> ReaderTable:
        return assign_readers(self.plans, self.placement, self.seers, self.file_ids)


def chunk_size(max_buffer: int, nprocs: int) -> int:
    """A chunk per round; a writer holds three (one filling, two queued) plus staging for its peers."""
    fanout = max(1, nprocs - 1)
    return max(1 << 20, min(max_buffer // (3 + min(fanout, 8)), 512 << 20))


@dataclass
class Rounds:
    """One process's part of every round; `sink` consumes this process's assembled chunks (None: it
    assembles none)."""

    t: Transport
    moves: Moves
    files: SourceFiles
    sink: ChunkSink | None
    chunk_bytes: int
    stats: RankStats
    progress: Progress | None = None
    scheduled: int = 0  # bytes of all writers' chunks so far (rank 0's progress measure)

    def run(self) -> None:
        table = self.moves.readers()
        placement = self.moves.placement
        gens = {}
        for w in sorted(set(placement.values())):
            mine = [self.moves.plans[tr] for tr in sorted(self.moves.plans) if placement[tr] == w]
            gens[w] = build_chunks(mine, self.chunk_bytes, table)
        while chunks := self._next(gens):
            self._round(chunks)
            round_delay()
        if self.progress is not None:
            self.progress.update(self.scheduled, final=True)

    @staticmethod
    def _next(gens: dict) -> dict[int, Chunk]:
        chunks: dict[int, Chunk] = {}
        for w in list(gens):
            c = next(gens[w], None)
            if c is None:
                del gens[w]
            else:
                chunks[w] = c
        return chunks

    def _round(self, chunks: dict[int, Chunk]) -> None:
        me = self.t.rank
        self.scheduled += sum(c.nbytes for c in chunks.values())
        own = chunks.get(me)
        buf = self.sink.take_buffer(own.nbytes) if own is not None and self.sink is not None else None
        recvs, incoming = self._expect(own)
        got: dict[tuple, memoryview] = {}
        if own is not None:
            self._read_own(own, buf, got)
        sends = self._pack_sends(chunks, got)
        if sends or recvs:
            self.t.exchange(sends, recvs)
        fault_point("mid-transfer", me)
        self._scatter_incoming(incoming, buf)
        if own is not None and self.sink is not None:
            if self.sink.error is not None:
                raise self.sink.error
            self.sink.queue.put((own, buf))
        if self.progress is not None:
            self.progress.update(self.scheduled)

    def _expect(self, own: Chunk | None) -> tuple[list, list]:
        """Receive buffers for the pieces other processes read for this one's chunk, one per reader."""
        recvs, incoming = [], []
        if own is None:
            return recvs, incoming
        by_reader: dict[int, list[Piece]] = defaultdict(list)
        for p in own.pieces:
            if p.reader != self.t.rank:
                by_reader[p.reader].append(p)
        for r, ps in sorted(by_reader.items()):
            staging = bytearray(sum(p.nbytes for p in ps))
            recvs.append((r, memoryview(staging)))
            incoming.append((staging, ps))
        return recvs, incoming

    def _read_own(self, own: Chunk, buf: memoryview, got: dict) -> None:
        for p in own.pieces:
            if p.reader != self.t.rank:
                continue
            key = (p.src_rank, p.tensor, p.src_box)
            view = target_view(buf, p)
            if view is not None:
                if key in got:
                    view[:] = got[key]
                else:
                    self.files.read(p, view)
                    got[key] = view
                continue
            if key not in got:
                tmp = memoryview(bytearray(p.nbytes))
                self.files.read(p, tmp)
                got[key] = tmp
            scatter(buf, p, got[key])

    def _pack_sends(self, chunks: dict[int, Chunk], got: dict) -> list[tuple[int, memoryview]]:
        sends = []
        for w, c in sorted(chunks.items()):
            if w == self.t.rank:
                continue
            ps = [p for p in c.pieces if p.reader == self.t.rank]
            if not ps:
                continue
            view = memoryview(bytearray(sum(p.nbytes for p in ps)))
            pos = 0
            for p in ps:
                key = (p.src_rank, p.tensor, p.src_box)
                if key in got:
                    view[pos:pos + p.nbytes] = got[key]
                else:
                    self.files.read(p, view[pos:pos + p.nbytes])
                    got[key] = view[pos:pos + p.nbytes]
                pos += p.nbytes
            sends.append((w, view))
            self.stats.bytes_sent += len(view)
        return sends

    def _scatter_incoming(self, incoming: list, buf: memoryview | None) -> None:
        for staging, ps in incoming:
            view = memoryview(staging)
            pos = 0
            for p in ps:
                scatter(buf, p, view[pos:pos + p.nbytes])
                pos += p.nbytes
                if [p.src_rank, p.reader] not in self.stats.received_from:
                    self.stats.received_from.append([p.src_rank, p.reader])
            self.stats.bytes_received += len(staging)


def run_with_sink(rounds: Rounds, sink: ChunkSink | None, files: SourceFiles) -> None:
    """Run the rounds with `sink` consuming chunks; END only when every round completed, else ABORT."""
    if sink is not None:
        sink.start()
    finished = False
    try:
        rounds.run()
        finished = True
    finally:
        if sink is not None:
            sink.queue.put(END if finished else ABORT)
            sink.join()
        files.close()
    if sink is not None and sink.error is not None:
        raise sink.error


def execute(t: Transport, moves: Moves, path_of: Callable[[TargetPlan], str], max_buffer: int,
            stats: RankStats, on_done: Callable[[int, int, int], None] | None = None,
            show_progress: bool = False) -> dict[int, tuple[str, int, int]]:
    """Move the planned bytes and write this process's targets: collective over `t`; a failure here must
    end the job (peers wait). Returns what this process wrote: target -> (path, size, CRC-32C)."""
    chunk_bytes = chunk_size(max_buffer, t.size)
    mine = [moves.plans[tr] for tr in sorted(moves.plans) if moves.placement[tr] == t.rank]
    writer = DiskWriter(mine, path_of, chunk_bytes, t.rank) if mine else None
    if writer is not None:
        writer.on_done = on_done
    files = SourceFiles(moves.visible, moves.metas)
    progress = None
    if show_progress and t.rank == 0:
        progress = Progress(sum(prod(x.shape) * itemsize(x.dtype) for p in moves.plans.values() for x in p.tensors))
    run_with_sink(Rounds(t, moves, files, writer, chunk_bytes, stats, progress), writer, files)
    stats.bytes_read = files.bytes_read
    stats.bytes_written = writer.bytes_written if writer is not None else 0
    return writer.results if writer is not None else {}
