"""Moving the planned bytes: every process runs the same number of rounds of reads, sends and writes.

Each writer's output is cut into chunks (`plan.schedule`); in round k every writer assembles its k-th
chunk, and every reader supplies the pieces writers asked it for in round k (`exchange`). A round on one
process: post receives for the pieces others read for it, read its own pieces (straight into the chunk
where contiguous), read and pack the pieces other writers asked for, exchange everything point to point
in one `Waitall`, scatter what arrived, and hand the chunk to the sink thread. A region wanted twice in
one round is read from disk once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mpitrans.job.assemble import scatter, target_view
from mpitrans.job.exchange import Ask, Remote, decide_readers, exchange_asks, remote_pieces, round_sizes
from mpitrans.job.faults import fault_point, round_delay
from mpitrans.job.metadata import SourceMetadata
from mpitrans.job.progress import Progress
from mpitrans.job.sinks import ABORT, END, ChunkSink, DiskWriter
from mpitrans.job.sources import SourceFiles
from mpitrans.job.summary import RankStats
from mpitrans.job.transport import Transport
from mpitrans.metadata import TensorMeta
from mpitrans.plan.planner import TargetPlan
from mpitrans.plan.schedule import Chunk, build_chunks
from mpitrans.storage.ckpt.crypto import CkptReading, CkptWriting


@dataclass
class Moves:
    """This process's part of a byte-moving phase: the targets it assembles, and what it knows about the
    sources (who sees which file, their metadata and exported indexes)."""

    plans: dict[int, TargetPlan]  # the targets this process assembles
    seers: Mapping[int, list[int]]  # source rank -> MPI ranks that see its file
    visible: dict[int, str]  # source rank -> path on this process
    metas: dict[int, list[TensorMeta]]
    file_ids: Mapping[int, Mapping[int, tuple]]
    sources: SourceMetadata | None = None  # exported indexes (None: each reader indexes its files)
    where: Mapping[int, int] | None = None  # every target of the job -> the process writing it
    reading: CkptReading | None = None  # .ckpt sources: CRC check, decryption
    writing: CkptWriting | None = None  # .ckpt targets: CRC trailer, encryption


def chunk_size(max_buffer: int, nprocs: int) -> int:
    """A chunk per round; a writer holds three (one filling, two queued) plus staging for its peers."""
    fanout = max(1, nprocs - 1)
    return max(1 << 20, min(max_buffer // (3 + min(fanout, 8)), 512 << 20))


def my_chunks(t: Transport, moves: Moves, chunk_bytes: int) -> list[Chunk]:
    """Collective (the reader decisions): this process's chunks, with a reader for every piece."""
    table = decide_readers(t, moves.plans, moves.seers, moves.file_ids, moves.where)
    return list(build_chunks([moves.plans[tr] for tr in sorted(moves.plans)], chunk_bytes, table))


@dataclass
class Rounds:
    """One process's part of every round; `sink` consumes its assembled chunks (None: it assembles none)."""

    t: Transport
    chunks: list[Chunk]
    files: SourceFiles
    sink: ChunkSink | None
    stats: RankStats
    progress: Progress | None = None
    remote: list[Remote] = field(default_factory=list, init=False)  # per chunk, set by `run`

    def run(self) -> None:
        clock = time.perf_counter()
        # Each chunk's pieces other processes read, grouped once: the asks and the receive buffers agree.
        self.remote = [remote_pieces(c, self.t.rank) for c in self.chunks]
        asks = exchange_asks(self.t, self.remote)
        reading = {p.src_rank for c in self.chunks for p in c.pieces if p.reader == self.t.rank}
        reading |= {a.src_rank for by_writer in asks.values() for pieces in by_writer.values() for a in pieces}
        self.files.prefetch(reading)
        sizes = round_sizes(self.t, self.chunks)
        rounds = max((len(s) for s in sizes), default=0)
        if self.progress is not None:
            self.progress.total = max(sum(sum(s) for s in sizes), 1)
        clock = self.stats.lap("exchange", clock)
        for k in range(rounds):
            own = self.chunks[k] if k < len(self.chunks) else None
            self._round(own, self.remote[k] if own is not None else {}, asks.get(k, {}))
            if self.progress is not None:
                self.progress.update(sum(sum(s[:k + 1]) for s in sizes))
            round_delay()
        if self.progress is not None:
            self.progress.update(sum(sum(s) for s in sizes), final=True)
        self.stats.lap("bytes", clock)

    def _round(self, own: Chunk | None, remote: Remote, serve: Mapping[int, list[Ask]]) -> None:
        buf = self.sink.take_buffer(own.nbytes) if own is not None and self.sink is not None else None
        recvs, incoming = self._expect(remote)
        got: dict[tuple, memoryview] = {}
        if own is not None:
            self._read_own(own, buf, got)
        sends = self._pack_sends(serve, got)
        if sends or recvs:
            self.t.exchange(sends, recvs)
        fault_point("mid-transfer", self.t.rank)
        self._scatter_incoming(incoming, buf)
        if own is not None and self.sink is not None:
            if self.sink.error is not None:
                raise self.sink.error
            self.sink.queue.put((own, buf))

    def _expect(self, remote: Remote) -> tuple[list, list]:
        """Receive buffers for the pieces other processes read for this one's chunk, one per reader, each
        region once however many of the chunk's pieces it fills (`remote`: its `remote_pieces`)."""
        recvs, incoming = [], []
        for r, wanted in remote.items():
            staging = bytearray(sum(ask.nbytes for ask, _ in wanted))
            recvs.append((r, memoryview(staging)))
            incoming.append((staging, wanted))
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

    def _pack_sends(self, serve: Mapping[int, list[Ask]], got: dict) -> list[tuple[int, memoryview]]:
        sends = []
        for w, asks in sorted(serve.items()):
            view = memoryview(bytearray(sum(a.nbytes for a in asks)))
            pos = 0
            for a in asks:
                key = (a.src_rank, a.tensor, a.src_box)
                if key in got:
                    view[pos:pos + a.nbytes] = got[key]
                else:
                    self.files.read(a, view[pos:pos + a.nbytes])
                    got[key] = view[pos:pos + a.nbytes]
                pos += a.nbytes
            sends.append((w, view))
            self.stats.bytes_sent += len(view)
        return sends

    def _scatter_incoming(self, incoming: list, buf: memoryview | None) -> None:
        for staging, wanted in incoming:
            view = memoryview(staging)
            pos = 0
            for ask, pieces in wanted:
                data = view[pos:pos + ask.nbytes]
                for p in pieces:
                    scatter(buf, p, data)
                pos += ask.nbytes
                if [ask.src_rank, pieces[0].reader] not in self.stats.received_from:
                    self.stats.received_from.append([ask.src_rank, pieces[0].reader])
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
    clock = time.perf_counter()
    chunks = my_chunks(t, moves, chunk_bytes)
    stats.lap("exchange", clock)
    mine = [moves.plans[tr] for tr in sorted(moves.plans)]
    writer = DiskWriter(mine, path_of, chunk_bytes, t.rank, writing=moves.writing) if mine else None
    if writer is not None:
        writer.on_done = on_done
    files = SourceFiles(moves.visible, moves.metas, moves.sources, moves.reading)
    progress = Progress(1) if show_progress and t.rank == 0 else None  # its total comes with the chunk sizes
    run_with_sink(Rounds(t, chunks, files, writer, stats, progress), writer, files)
    stats.bytes_read = files.bytes_read
    stats.bytes_written = writer.bytes_written if writer is not None else 0
    return writer.results if writer is not None else {}
