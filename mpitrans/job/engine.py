"""The job: agree on strategies and inventories, plan, then stream bytes from readers to writers.

Every process runs the same sequence. Phases that can fail on bad input (strategies, inventories,
metadata, planning) end with an agreement step, so one bad file makes every rank stop with the same
message instead of leaving peers waiting in a collective. After planning, each rank moves bytes in
rounds (see `schedule`): reads what it was assigned, sends it to the writer that needs it, assembles
its own chunk, and hands it to a background thread that streams it to disk.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from math import prod

import numpy as np

from mpitrans.errors import MissingShardError, MpitransError
from mpitrans.job import manifest
from mpitrans.job.guard import Interrupted, JobGuard, report_once
from mpitrans.job.lock import JobLock
from mpitrans.job.progress import Progress
from mpitrans.job.transport import Transport, make_transport
from mpitrans.metadata import TensorMeta, itemsize
from mpitrans.plan.consistency import check_sources, probe_ranks, source_scope
from mpitrans.plan.layout import box_shape
from mpitrans.plan.planner import OutTensor, Planner, TargetPlan
from mpitrans.plan.schedule import Chunk, Piece, build_chunks
from mpitrans.storage.base import TargetWriter, remove_stale_temps
from mpitrans.storage.discover import describe_missing, discover_sources, rank_dirs_without_checkpoint
from mpitrans.storage.formats import CKPT, open_source, target_filename
from mpitrans.strategy.codec import strategy_from_bytes, strategy_to_bytes
from mpitrans.strategy.layout_map import layout_map
from mpitrans.strategy.merge import load_strategy

log = logging.getLogger("mpitrans")

DEFAULT_MAX_BUFFER = 64 << 20


class JobError(MpitransError):
    """An error some rank hit, reported identically on every rank."""


@dataclass
class RankStats:
    rank: int
    host: str
    targets: list[int] = field(default_factory=list)
    bytes_read: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    # [source rank, sending MPI rank] pairs whose bytes reached this rank over MPI, not from its disk.
    received_from: list[list[int]] = field(default_factory=list)


@dataclass
class Summary:
    dst_checkpoint: str
    targets: dict[int, str]  # target rank -> file path
    placement: dict[int, int]  # target rank -> MPI rank that wrote it
    ranks: list[RankStats]
    wall_seconds: float

    @property
    def bytes_written(self) -> int:
        return sum(r.bytes_written for r in self.ranks)

    def to_json(self) -> dict:
        d = asdict(self)
        d["bytes_written"] = self.bytes_written
        d["gb_per_s"] = self.bytes_written / self.wall_seconds / 1e9 if self.wall_seconds > 0 else 0.0
        return d


def round_robin_placement(targets: Sequence[int], nprocs: int) -> dict[int, int]:
    """Target i on MPI rank i (mod the process count): a hostfile laid out like training puts each shard
    on the host that will load it."""
    return {t: t % nprocs for t in targets}


def _agree(t: Transport, fn: Callable[[], object]) -> object:
    """Run `fn`; if it failed on any rank, raise the lowest rank's message on every rank."""
    result, err = None, ""
    try:
        result = fn()
    except MpitransError as exc:
        err = str(exc)
    except OSError as exc:
        err = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    errors = t.allgather_bytes(err.encode())
    failed = [(r, msg) for r, msg in enumerate(errors) if msg]
    if failed:
        r, msg = failed[0]
        same_everywhere = len(failed) == t.size and all(m == msg for _, m in failed)
        prefix = f"rank {r}: " if t.size > 1 and not same_everywhere else ""
        raise JobError(prefix + msg.decode())
    return result


FAULT_STAGES = ("after-plan", "mid-transfer", "mid-write")
# Test hook: seconds to sleep after each round, so interruption tests can hit a multi-second run at
# random points on any machine.
_ROUND_DELAY = float(os.environ.get("MPITRANS_TEST_ROUND_DELAY", "0") or 0)


def fault_point(stage: str, rank: int) -> None:
    """Test hook: `MPITRANS_FAULT=RANK:STAGE` kills that rank (SIGKILL) when it reaches STAGE."""
    spec = os.environ.get("MPITRANS_FAULT")
    if not spec:
        return
    want_rank, _, want_stage = spec.partition(":")
    if want_stage == stage and want_rank.strip() == str(rank):
        import signal

        sys.stderr.write(f"[mpitrans r{rank}] MPITRANS_FAULT: killing this rank at {stage}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def check_prefix(prefix: str) -> None:
    """Output names are `{prefix}{rank}.ckpt` inside rank_x/: a prefix must not leave that directory."""
    if not isinstance(prefix, str) or "/" in prefix or "\\" in prefix or ".." in prefix or "\0" in prefix:
        raise MpitransError(f"unsafe --prefix {prefix!r}: it may not contain path separators or '..'")


def _rank_table_placement(t: Transport, path: str) -> Callable[[Sequence[int], int], dict[int, int]]:
    """Rank 0 reads the HCCL rank table; every rank learns which server it runs on."""
    from mpitrans import cluster as rtab

    blob = _agree(t, lambda: json.dumps(rtab.load(path).to_json()).encode() if t.rank == 0 else b"")
    table = rtab.from_json(json.loads(t.bcast_bytes(blob if t.rank == 0 else None)), path)
    return rtab.job_placement(table, t.allgather_bytes)


def _metas_to_json(metas: dict[int, list[TensorMeta]]) -> bytes:
    return json.dumps({str(r): [[m.name, m.dtype, list(m.shape)] for m in ms] for r, ms in metas.items()}).encode()


def _metas_from_json(data: bytes) -> dict[int, list[TensorMeta]]:
    raw = json.loads(data.decode()) if data else {}
    return {int(r): [TensorMeta(n, d, tuple(s)) for n, d, s in ms] for r, ms in raw.items()}


class _SourceFiles:
    """Open source readers, opened on first use and kept for the job."""

    def __init__(self, paths: dict[int, str], metas: dict[int, list[TensorMeta]]) -> None:
        self.paths = paths
        self.metas = {r: {m.name: m for m in ms} for r, ms in metas.items()}
        self._readers: dict[int, object] = {}
        self._listed: dict[int, dict[str, TensorMeta]] = {}
        self._checked: set[tuple[int, str]] = set()
        self.bytes_read = 0

    def reader(self, src_rank: int, name: str):
        reader = self._readers.get(src_rank)
        if reader is None:
            reader = self._readers[src_rank] = open_source(self.paths[src_rank])
            self._listed[src_rank] = {m.name: m for m in reader.tensors()}
        if (src_rank, name) not in self._checked:
            here = self._listed[src_rank].get(name)
            meta = self.metas.get(src_rank, {}).get(name)
            if here is None or (meta is not None and here != meta):
                raise MpitransError(
                    f"{self.paths[src_rank]}: parameter {name!r} differs from the copy of this file other ranks "
                    f"indexed (missing, or another dtype/shape)"
                )
            self._checked.add((src_rank, name))
        return reader

    def read(self, piece: Piece, out: memoryview) -> None:
        self.reader(piece.src_rank, piece.tensor).read_box(piece.tensor, piece.src_box, out)
        self.bytes_read += len(out)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def _is_contiguous_sub_box(box, shape) -> bool:
    """True when `box` inside a C-contiguous block of `shape` is itself one contiguous byte run."""
    p = 0
    while p < len(shape) - 1 and box[p][1] - box[p][0] == 1:
        p += 1
    return all(box[q] == (0, shape[q]) for q in range(p + 1, len(shape)))


def _flat_offset(box, shape) -> int:
    off = 0
    for (a, _), s in zip(box, shape, strict=True):
        off = off * s + a
    return off


class _Assembler:
    """Places piece bytes into a chunk buffer."""

    @staticmethod
    def target_view(buf: bytearray, piece: Piece) -> memoryview | None:
        if not _is_contiguous_sub_box(piece.in_block, piece.block_shape):
            return None
        start = piece.block_offset + _flat_offset(piece.in_block, piece.block_shape) * piece.itemsize
        return memoryview(buf)[start:start + piece.nbytes]

    @staticmethod
    def scatter(buf: bytearray, piece: Piece, data: memoryview) -> None:
        view = _Assembler.target_view(buf, piece)
        if view is not None:
            view[:] = data
            return
        n = prod(piece.block_shape) * piece.itemsize
        block = np.frombuffer(buf, dtype=np.uint8, count=n, offset=piece.block_offset)
        block = block.reshape((*piece.block_shape, piece.itemsize))
        sel = tuple(slice(a, b) for a, b in piece.in_block)
        block[sel] = np.frombuffer(data, dtype=np.uint8).reshape((*box_shape(piece.in_block), piece.itemsize))


# End-of-work signals for the writer thread: only END publishes what is still open.
END = "end"
ABORT = "abort"


class _DiskWriter(threading.Thread):
    """Streams assembled chunks into the target files on this rank, overlapping disk writes with the next
    round's reads and transfers.

    A target is published (renamed to its final name, then recorded through `on_done`) only once every
    byte the plan gives it has been written; a failure anywhere, or ABORT from the main thread, removes
    the open temporary file and publishes and records nothing more.
    """

    def __init__(self, targets: list[TargetPlan], path_of: Callable[[TargetPlan], str], fmt=CKPT) -> None:
        super().__init__(name="mpitrans-writer", daemon=True)
        self.targets = targets
        self.path_of = path_of
        self.fmt = fmt
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        # Chunk buffers come back here once written, so the next rounds reuse them instead of paying
        # for fresh zeroed allocations; at most three exist (one filling, two queued).
        self.free: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.bytes_written = 0
        self.chunk_hint = 0
        self.rank = 0
        self.results: dict[int, tuple[str, int, int]] = {}  # target -> (path, size, crc32c)
        self.on_done: Callable[[int, int, int], None] | None = None

    def run(self) -> None:
        current: TargetWriter | None = None
        current_index = -1
        opened: set[int] = set()
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
                view = memoryview(buf)
                for seg in chunk.segments:
                    if seg.target_index != current_index:
                        if current is not None:
                            self._finish(current_index, current)
                        current = None
                        current = self._open(seg.target_index)
                        current_index = seg.target_index
                        opened.add(current_index)
                    tensor = self.targets[seg.target_index].tensors[seg.tensor_index]
                    n = (seg.stop - seg.start) * itemsize(tensor.dtype)
                    current.write(view[seg.chunk_offset:seg.chunk_offset + n])
                    self.bytes_written += n
                    fault_point("mid-write", self.rank)
                del view
                self.free.put(buf)
            if current is not None:
                self._finish(current_index, current)
                current = None
            for i, _ in enumerate(self.targets):
                if i not in opened:  # a target with no tensors still gets its (empty) file
                    self._finish(i, self._open(i))
        except BaseException as exc:  # reported by the main thread
            if not isinstance(exc, _Aborted):
                if isinstance(exc, OSError) and current is not None:
                    exc = MpitransError(f"writing {exc.filename or current.path} failed: {exc.strerror or exc}")
                self.error = exc
            if current is not None:
                current.abort()
            while not ended:  # keep draining so the main thread never blocks on a full queue
                item = self.queue.get()
                ended = item is END or item is ABORT

    def _open(self, index: int) -> TargetWriter:
        target = self.targets[index]
        path = self.path_of(target)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tensors = [TensorMeta(x.name, x.dtype, x.shape) for x in target.tensors]
        return self.fmt.open_target(path, tensors)

    def _finish(self, index: int, writer: TargetWriter) -> None:
        done = writer.commit()  # refuses (and removes) a target that did not get every byte
        target = self.targets[index].rank
        self.results[target] = (done.path, done.size, done.crc32c)
        if self.on_done is not None:
            self.on_done(target, done.size, done.crc32c)


class _Aborted(Exception):
    """The main thread gave up: drop what is open, publish nothing more."""


def _take_buffer(writer: _DiskWriter, nbytes: int) -> memoryview:
    """A chunk buffer of exactly `nbytes` (a view of a recycled, possibly larger one)."""
    try:
        buf = writer.free.get_nowait()
    except queue.Empty:
        buf = None
    if buf is None or len(buf.obj if isinstance(buf, memoryview) else buf) < nbytes:
        buf = bytearray(max(nbytes, writer.chunk_hint))
    base = buf.obj if isinstance(buf, memoryview) else buf
    return memoryview(base)[:nbytes]


def _run_rounds(
    t: Transport,
    plans: dict[int, TargetPlan],
    placement: dict[int, int],
    seers: dict[int, list[int]],
    files: _SourceFiles,
    writer: _DiskWriter | None,
    chunk_bytes: int,
    stats: RankStats,
    file_ids: dict[int, dict[int, tuple]] | None = None,
    progress: Progress | None = None,
) -> None:
    me = t.rank
    file_ids = file_ids or {}
    scheduled = 0
    load = defaultdict(int)

    # Identical source regions wanted by several writers (data-parallel target replicas) are read once:
    # the first writer that can see the file reads it, and later writers that see the *same* file
    # (same host, same inode: a shared disk) receive it from that reader instead of reading it again.
    assigned: dict[tuple, tuple[int, int]] = {}

    def same_file(g: int, r1: int, r2: int) -> bool:
        a, b = file_ids.get(g, {}).get(r1), file_ids.get(g, {}).get(r2)
        return a is not None and a == b

    def chooser(writer_rank: int):
        def choose(target: TargetPlan, tensor: OutTensor, ri: int) -> tuple[int, int]:
            region = tensor.regions[ri]
            key = (tensor.name, region.src_box, region.candidates)
            prev = assigned.get(key)
            local = [g for g in region.candidates if writer_rank in seers.get(g, ())]
            if local:
                if prev is not None and prev[0] != writer_rank and prev[1] in local \
                        and same_file(prev[1], prev[0], writer_rank):
                    return prev
                choice = (writer_rank, local[0])
                assigned.setdefault(key, choice)
                return choice
            if prev is not None:
                return prev
            best = None
            for g in region.candidates:
                for r in seers.get(g, ()):
                    if best is None or load[r] < load[best[0]]:
                        best = (r, g)
            if best is None:  # validated before any byte moves; kept as a guard
                raise MissingShardError(f"no process sees a source file for {tensor.name!r}")
            load[best[0]] += prod(box_shape(region.dst_box))
            assigned[key] = best
            return best

        return choose

    writers = sorted(set(placement.values()))
    gens = {}
    for w in writers:
        mine = [plans[tr] for tr in sorted(plans) if placement[tr] == w]
        gens[w] = build_chunks(mine, chunk_bytes, itemsize, chooser(w))
    while gens:
        chunks: dict[int, Chunk] = {}
        for w in list(gens):
            c = next(gens[w], None)
            if c is None:
                del gens[w]
            else:
                chunks[w] = c
        if not chunks:
            break
        scheduled += sum(c.nbytes for c in chunks.values())
        own = chunks.get(me)
        buf = _take_buffer(writer, own.nbytes) if own is not None else None
        recvs, incoming = [], []
        if own is not None:
            by_reader: dict[int, list[Piece]] = defaultdict(list)
            for p in own.pieces:
                if p.reader != me:
                    by_reader[p.reader].append(p)
            for r, ps in sorted(by_reader.items()):
                staging = bytearray(sum(p.nbytes for p in ps))
                recvs.append((r, memoryview(staging)))
                incoming.append((staging, ps))
        # Read what this rank must read: its own pieces straight into its chunk where contiguous, then the
        # pieces other writers need; a region wanted twice in this round is read from disk once.
        got: dict[tuple, memoryview] = {}
        if own is not None:
            for p in own.pieces:
                if p.reader != me:
                    continue
                key = (p.src_rank, p.tensor, p.src_box)
                target = _Assembler.target_view(buf, p)
                if target is not None:
                    if key in got:
                        target[:] = got[key]
                    else:
                        files.read(p, target)
                        got[key] = target
                else:
                    if key not in got:
                        tmp = memoryview(bytearray(p.nbytes))
                        files.read(p, tmp)
                        got[key] = tmp
                    _Assembler.scatter(buf, p, got[key])
        sends = []
        for w, c in sorted(chunks.items()):
            if w == me:
                continue
            ps = [p for p in c.pieces if p.reader == me]
            if not ps:
                continue
            out = bytearray(sum(p.nbytes for p in ps))
            view = memoryview(out)
            pos = 0
            for p in ps:
                key = (p.src_rank, p.tensor, p.src_box)
                if key in got:
                    view[pos:pos + p.nbytes] = got[key]
                else:
                    files.read(p, view[pos:pos + p.nbytes])
                    got[key] = view[pos:pos + p.nbytes]
                pos += p.nbytes
            sends.append((w, view))
            stats.bytes_sent += len(out)
        if sends or recvs:
            t.exchange(sends, recvs)
        fault_point("mid-transfer", me)
        for staging, ps in incoming:
            view = memoryview(staging)
            pos = 0
            for p in ps:
                _Assembler.scatter(buf, p, view[pos:pos + p.nbytes])
                pos += p.nbytes
                if [p.src_rank, p.reader] not in stats.received_from:
                    stats.received_from.append([p.src_rank, p.reader])
            stats.bytes_received += len(staging)
        if own is not None:
            if writer.error is not None:
                raise writer.error
            writer.queue.put((own, buf))
        if progress is not None:
            progress.update(scheduled)
        if _ROUND_DELAY:
            time.sleep(_ROUND_DELAY)
    if progress is not None:
        progress.update(scheduled, final=True)


def execute(
    t: Transport,
    plans: dict[int, TargetPlan],
    where: dict[int, int],
    seers: dict[int, list[int]],
    visible: dict[int, str],
    metas: dict[int, list[TensorMeta]],
    path_of: Callable[[TargetPlan], str],
    max_buffer: int,
    stats: RankStats,
    on_done: Callable[[int, int, int], None] | None = None,
    file_ids: dict[int, dict[int, tuple]] | None = None,
    show_progress: bool = False,
) -> dict[int, tuple[str, int, int]]:
    """Move the planned bytes: collective over `t`; any failure here must abort the job (peers wait).
    Returns what this rank wrote: target -> (path, size, CRC-32C)."""
    fanout = max(1, t.size - 1)
    chunk_bytes = max(1 << 20, min(max_buffer // (3 + min(fanout, 8)), 512 << 20))
    mine_targets = [plans[tr] for tr in sorted(plans) if where[tr] == t.rank]
    writer = _DiskWriter(mine_targets, path_of) if mine_targets else None
    if writer is not None:
        writer.chunk_hint = chunk_bytes
        writer.rank = t.rank
        writer.on_done = on_done
    files = _SourceFiles(visible, metas)
    if writer is not None:
        writer.start()
    finished = False
    try:
        progress = None
        if show_progress and t.rank == 0:
            total = sum(prod(x.shape) * itemsize(x.dtype) for p in plans.values() for x in p.tensors)
            progress = Progress(total)
        _run_rounds(t, plans, where, seers, files, writer, chunk_bytes, stats, file_ids, progress)
        finished = True
    finally:
        if writer is not None:
            writer.queue.put(END if finished else ABORT)
            writer.join()
        files.close()
    if writer is not None and writer.error is not None:
        raise writer.error
    stats.bytes_read = files.bytes_read
    stats.bytes_written = writer.bytes_written if writer is not None else 0
    return writer.results if writer is not None else {}


@dataclass
class Job:
    """Everything every rank agrees on before any byte moves."""

    src: object
    dst: object
    src_bytes: bytes | None
    dst_bytes: bytes | None
    visible: dict[int, str]  # source rank -> path, as this rank sees it
    inventories: list[dict[str, str]]  # per MPI rank: source rank (str) -> path
    sizes: dict[int, int]
    seers: dict[int, list[int]]  # source rank -> MPI ranks that see its file
    needed: set[int]
    metas: dict[int, list[TensorMeta]]
    plans: dict[int, TargetPlan]
    file_ids: dict[int, dict[int, tuple]]  # source rank -> MPI rank -> (host, st_dev, st_ino)


def prepare(t: Transport, src_checkpoint: str, src_strategy: str | None, dst_strategy: str | None,
            prefix: str, strict: bool = False) -> Job:
    """Phases 1-4, collective: strategies, inventories, metadata, plans; one agreed error on bad input."""
    # 1. Strategies: read (and merge) once on rank 0, broadcast as bytes.
    def load_both() -> bytes:
        out = []
        for path in (src_strategy, dst_strategy):
            out.append(strategy_to_bytes(load_strategy(path)).hex() if path else None)
        return json.dumps(out).encode()

    payload = _agree(t, load_both) if t.rank == 0 else _agree(t, lambda: b"")
    payload = t.bcast_bytes(payload if t.rank == 0 else None)
    src_hex, dst_hex = json.loads(payload.decode())
    src_bytes = bytes.fromhex(src_hex) if src_hex else None
    dst_bytes = bytes.fromhex(dst_hex) if dst_hex else None
    src = strategy_from_bytes(bytes.fromhex(src_hex)) if src_hex else None
    dst = strategy_from_bytes(bytes.fromhex(dst_hex)) if dst_hex else None

    # 2. Inventories: what each rank sees under src_checkpoint.
    visible = discover_sources(src_checkpoint)
    host = socket.gethostname()
    listing = {}
    for k, v in visible.items():
        st = os.stat(v)
        listing[str(k)] = [v, st.st_size, host, st.st_dev, st.st_ino]
    inventories, sizes = [], {}
    file_ids: dict[int, dict[int, tuple]] = defaultdict(dict)
    for r, blob in enumerate(t.allgather_bytes(json.dumps(listing).encode())):
        inv = json.loads(blob)
        inventories.append({k: v[0] for k, v in inv.items()})
        sizes.update({int(k): v[1] for k, v in inv.items()})
        for k, v in inv.items():
            file_ids[int(k)][r] = tuple(v[2:])
    seers: dict[int, list[int]] = defaultdict(list)
    for r, inv in enumerate(inventories):
        for k in inv:
            seers[int(k)].append(r)
    if not seers:
        empty = rank_dirs_without_checkpoint(src_checkpoint)
        hint = f" ({', '.join(empty)} hold no .ckpt file)" if empty else ""
        raise JobError(f"no source checkpoint found under {src_checkpoint}{hint}")

    # 3. Metadata of the files MindSpore would load; each indexed by one rank that sees it.
    def needed_sources() -> set[int]:
        shape_only = Planner(src, dst, {}, prefix)
        if shape_only.by_stage:
            first = src.stage * shape_only.src_stage_devices
            return set(range(first, first + shape_only.src_stage_devices))
        need: set[int] = set()
        for tr in shape_only.target_ranks():
            need.update(shape_only.rank_list(tr) if src is not None else [0])
        return need

    needed = _agree(t, needed_sources)
    to_index = sorted(seers) if any(n not in seers for n in needed) else sorted(n for n in needed if n in seers)
    to_index = sorted(set(to_index) | probe_ranks(source_scope(src, dst, prefix), seers))

    def index_mine() -> bytes:
        metas: dict[int, list[TensorMeta]] = {}
        for i, g in enumerate(to_index):
            owners = seers[g]
            if owners[i % len(owners)] != t.rank:
                continue
            reader = open_source(inventories[t.rank][str(g)])
            metas[g] = reader.tensors()
            reader.close()
        return _metas_to_json(metas)

    mine = _agree(t, index_mine)
    metas: dict[int, list[TensorMeta]] = {}
    for blob in t.allgather_bytes(mine):
        metas.update(_metas_from_json(blob))
    # 3b. Every indexed file against the strategy and the other files; only the job's ranks go on.
    paths = {g: inventories[seers[g][0]][str(g)] for g in seers}
    metas = _agree(t, lambda: check_sources(src, dst, metas, paths, seers, src_checkpoint, prefix))

    # 4. Plan every target (deterministic, identical on every rank) and check every byte has a reader.
    def check_models_match() -> None:
        """`strict`: the destination must describe the same model as the source checkpoints."""
        if not strict or dst is None:
            return
        have = {m.name for ms in metas.values() for m in ms}
        wanted = list(layout_map(dst))
        absent = [n for n in wanted if n not in have]
        if absent and len(absent) == len(wanted):
            raise MpitransError(
                f"the destination strategy and the source checkpoints describe different models: none of its "
                f"{len(wanted)} parameters (e.g. {absent[0]!r}) is in the source checkpoints"
            )
        if absent:
            more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
            raise MpitransError(
                f"parameter {absent[0]!r}{more} of the destination strategy is in no source checkpoint "
                f"(MindSpore would silently leave it out of the targets)"
            )
        if src is not None and not set(layout_map(src)) & set(wanted):
            raise MpitransError("the source and destination strategies share no parameter: different models?")

    _agree(t, check_models_match)

    def make_plans():
        planner = Planner(src, dst, metas, prefix)
        targets = planner.target_ranks()
        plans = {}
        for tr in targets:
            try:
                plans[tr] = planner.plan(tr)
            except MissingShardError as exc:
                absent = {g: () for g in needed if g not in seers}
                hint = f"; not visible to any process: {describe_missing(src_checkpoint, absent)}" if absent else ""
                raise MissingShardError(f"target rank {tr}: {exc}{hint}") from None
        missing: dict[int, set[int]] = defaultdict(set)
        for tr, plan in plans.items():
            for tensor in plan.tensors:
                for region in tensor.regions:
                    if not any(g in seers for g in region.candidates):
                        for g in region.candidates or ():
                            missing[g].add(tr)
        needed_missing = {g: trs for g, trs in missing.items()}
        for g in needed:
            if g not in seers and g not in metas:
                needed_missing.setdefault(g, set())
        hard = {g: trs for g, trs in needed_missing.items() if trs}
        if hard:
            raise MissingShardError(
                f"source checkpoint(s) visible to no process under {src_checkpoint}: "
                + describe_missing(src_checkpoint, hard)
            )
        return plans

    plans = _agree(t, make_plans)
    return Job(src, dst, src_bytes, dst_bytes, visible, inventories, sizes, seers, needed, metas, plans, file_ids)


def transform(
    src_checkpoint: str,
    dst_checkpoint: str,
    src_strategy: str | None = None,
    dst_strategy: str | None = None,
    prefix: str = "checkpoint_",
    comm=None,
    max_buffer: int = DEFAULT_MAX_BUFFER,
    placement: Callable[[Sequence[int], int], dict[int, int]] | None = None,
    rank_table: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    strict: bool = False,
    write_manifest: bool = True,
    show_progress: bool = False,
) -> Summary:
    """Reshard `src_checkpoint` into `dst_checkpoint/rank_x/{prefix}x.ckpt`; collective over `comm`.

    `comm` is an mpi4py communicator (default: COMM_WORLD when launched by mpirun, else this process
    alone). Raises `MpitransError` (the same message on every rank) for bad input found before any byte
    is written.
    """
    t = make_transport(comm)
    with JobGuard(t.abort, t.rank, watch_parent=t.size > 1, grace=0.5 if t.size > 1 else 5.0):
        try:
            return _transform(t, src_checkpoint, dst_checkpoint, src_strategy, dst_strategy, prefix, max_buffer,
                              placement, rank_table, overwrite, resume, strict, write_manifest, show_progress)
        except JobError:
            raise  # every rank holds the same error: the caller reports it once
        except BaseException as exc:
            if t.size == 1:
                raise
            # Only this rank failed and its peers may wait for it in a collective: end the job now.
            fail_job(t, exc)
            raise


def fail_job(t: Transport, exc: BaseException) -> None:
    """Report this rank's failure once and abort every process of the job (no peer is left waiting)."""
    if isinstance(exc, MpitransError):
        report_once(f"mpitrans: error on rank {t.rank}: {exc}")
    else:
        import traceback

        traceback.print_exception(exc)
        report_once(f"mpitrans: rank {t.rank} failed: {exc!r}; aborting the job")
    t.abort(128 + exc.signum if isinstance(exc, Interrupted) else 1)


def check_destination(dst_checkpoint: str, src_checkpoint: str, visible: dict[int, str]) -> None:
    """Refuse an output directory that is the source model_dir or lies inside a source rank directory:
    writing there would replace or mix with the files being read."""
    dst = os.path.realpath(dst_checkpoint)
    if os.path.isdir(src_checkpoint) and os.path.realpath(src_checkpoint) == dst:
        raise MpitransError(f"--dst-checkpoint {dst_checkpoint} is the source directory; write the targets "
                            f"to another directory")
    for g, path in sorted(visible.items()):
        if os.path.isfile(src_checkpoint):
            break
        rank_dir = os.path.realpath(os.path.dirname(path))
        if dst == rank_dir or dst.startswith(rank_dir + os.sep):
            raise MpitransError(f"--dst-checkpoint {dst_checkpoint} is inside the source directory of rank {g} "
                                f"({rank_dir}); write the targets to another directory")


def _fingerprints(t: Transport, job: Job, wanted: set[int]) -> dict[int, dict]:
    """Each used source file fingerprinted once, by the first process that sees it; known to all."""
    mine = {}
    for g in sorted(wanted):
        if g in job.seers and job.seers[g][0] == t.rank:
            mine[str(g)] = manifest.fingerprint(job.visible[g])
    out: dict[int, dict] = {}
    for blob in t.allgather_bytes(json.dumps(mine).encode()):
        out.update({int(k): v for k, v in json.loads(blob).items()})
    return out


def _sources_of(plan: TargetPlan) -> list[int]:
    return sorted({g for x in plan.tensors for region in x.regions for g in region.candidates})


def _transform(t: Transport, src_checkpoint: str, dst_checkpoint: str, src_strategy: str | None,
               dst_strategy: str | None, prefix: str, max_buffer: int, placement, rank_table: str | None,
               overwrite: bool, resume: bool, strict: bool, write_manifest: bool, show_progress: bool) -> Summary:
    start = time.perf_counter()
    stats = RankStats(t.rank, socket.gethostname())
    _agree(t, lambda: check_prefix(prefix))
    if placement is None:
        placement = _rank_table_placement(t, rank_table) if rank_table else round_robin_placement

    job = prepare(t, src_checkpoint, src_strategy, dst_strategy, prefix, strict)
    plans = job.plans
    where = _agree(t, lambda: placement(sorted(plans), t.size))
    _agree(t, lambda: check_destination(dst_checkpoint, src_checkpoint, job.visible))

    def path_of(target: TargetPlan) -> str:
        return os.path.join(dst_checkpoint, f"rank_{target.rank}", target_filename(target.stem))

    used = {tr: _sources_of(p) for tr, p in plans.items()}
    fingerprints = _fingerprints(t, job, {g for gs in used.values() for g in gs})
    identity = manifest.job_identity(job.src_bytes, job.dst_bytes, prefix)
    relpath = {tr: os.path.join(f"rank_{tr}", target_filename(plans[tr].stem)) for tr in plans}
    writes_here = any(r == t.rank for r in where.values()) or t.rank == 0

    # The job lock comes before anything touches the output directory (cleanup included).
    job_id = t.bcast_bytes(uuid.uuid4().hex.encode() if t.rank == 0 else None).decode()
    lock = JobLock(dst_checkpoint, job_id)
    _agree(t, lambda: lock.acquire() if writes_here else None)
    if lock.stale:
        log.warning("took over the lock of an earlier mpitrans job that is no longer running (%s)", lock.stale)
    try:
        summary = _locked_run(t, job, where, dst_checkpoint, path_of, relpath, used, fingerprints, identity,
                              overwrite, resume, max_buffer, stats, show_progress, write_manifest, writes_here)
    finally:
        lock.release()
    summary.wall_seconds = time.perf_counter() - start
    return summary


def _keep_finished(t: Transport, where: dict[int, int], dst_checkpoint: str, relpath: dict[int, str],
                   identity: dict, fingerprints: dict[int, dict]) -> dict[int, dict]:
    """With --resume: this rank's targets that an earlier run of the same job completed."""
    old = manifest.read(dst_checkpoint)
    out = {}
    for tr, r in sorted(where.items()):
        if r != t.rank:
            continue
        decision = manifest.reusable(dst_checkpoint, old, identity, fingerprints, tr, relpath[tr])
        if decision.entry is None:
            progress = manifest.read_progress(dst_checkpoint, tr)
            second = manifest.reusable(dst_checkpoint, progress, identity, fingerprints, tr, relpath[tr])
            decision = second if second.entry is not None or second.why else decision
        if decision.entry is not None:
            out[tr] = decision.entry
        elif decision.why:
            log.warning("--resume: redoing target rank %d: %s", tr, decision.why)
    return out


def _check_outputs(t: Transport, where: dict[int, int], paths: dict[int, str], overwrite: bool,
                   resume: bool) -> None:
    for tr, r in sorted(where.items()):
        if r != t.rank:
            continue
        path = paths[tr]
        if os.path.isdir(path):
            raise MpitransError(f"{path} is a directory; remove it (a target file goes there)")
        if os.path.lexists(path) and not (overwrite or resume):
            raise MpitransError(f"{path} already exists; pass --overwrite to replace it (or --resume)")


def _locked_run(t: Transport, job: Job, where: dict[int, int], dst_checkpoint: str, path_of, relpath,
                used: dict[int, list[int]], fingerprints: dict[int, dict], identity: dict, overwrite: bool,
                resume: bool, max_buffer: int, stats: RankStats, show_progress: bool, write_manifest: bool,
                writes_here: bool) -> Summary:
    plans = job.plans
    kept_here = _agree(t, lambda: _keep_finished(t, where, dst_checkpoint, relpath, identity, fingerprints)
                       if resume else {})
    kept = sorted({int(k) for b in t.allgather_bytes(json.dumps(kept_here).encode()) for k in json.loads(b)})
    paths = {tr: path_of(p) for tr, p in plans.items()}

    def outputs_ready() -> None:
        """Checked, and cleared of a killed run's temporary files, before any rank writes anything: the
        agreement that follows keeps one rank's cleanup from meeting another's fresh temporary files."""
        _check_outputs(t, where, paths, overwrite, resume)
        for tr, r in where.items():
            if r == t.rank:
                remove_stale_temps(paths[tr])
        if writes_here:
            manifest.remove_stale_temps(dst_checkpoint)

    _agree(t, outputs_ready)
    fault_point("after-plan", t.rank)
    stats.targets = sorted(tr for tr, r in where.items() if r == t.rank)

    # 5. Move bytes.
    todo = {tr: p for tr, p in plans.items() if tr not in kept}

    def entry_of(target: int, size: int, crc: int) -> dict:
        return {"path": relpath[target], "size": size, "crc32c": crc, "sources": used[target]}

    def progress(target: int, size: int, crc: int) -> None:
        manifest.record_progress(dst_checkpoint, identity, fingerprints, target, entry_of(target, size, crc))

    written = execute(t, todo, where, job.seers, job.visible, job.metas, path_of, max_buffer, stats, progress,
                      job.file_ids, show_progress)

    # 6. Manifest, written last: every rank that owns targets writes the same document (atomically), so
    # each host's output directory gets one even without a shared disk.
    mine = {tr: entry_of(tr, size, crc) for tr, (_, size, crc) in written.items()}
    mine.update({int(k): v for k, v in kept_here.items()})
    files_all: dict[int, dict] = {}
    for blob in t.allgather_bytes(json.dumps(mine).encode()):
        files_all.update({int(k): v for k, v in json.loads(blob).items()})
    if write_manifest and writes_here:
        manifest.write(dst_checkpoint, manifest.build(identity, fingerprints, files_all))
    manifest.clear_progress(dst_checkpoint, [tr for tr, r in where.items() if r == t.rank])

    all_stats = [RankStats(**json.loads(b)) for b in t.allgather_bytes(json.dumps(asdict(stats)).encode())]
    stats.seconds = 0.0
    out_paths = {tr: os.path.abspath(p) for tr, p in paths.items()}
    return Summary(os.path.abspath(dst_checkpoint), out_paths, where, all_stats, 0.0)
