"""The transform job from start to finish, on every process of the job.

prepare (strategies, inventories, metadata, plans: `prepare`) -> placement (which process writes which
target) -> the output directory's lock -> resume decisions and output checks -> bytes (`rounds`) ->
manifest. Every step before bytes move is agreed on by all processes (`agree`); a failure while bytes
move ends the whole job at once (`agree.fail_job`), and signals are turned into the same path (`guard`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

from mpitrans.errors import MpitransError
from mpitrans.job import manifest
from mpitrans.job.agree import JobError, agree, fail_job
from mpitrans.job.faults import fault_point
from mpitrans.job.guard import JobGuard
from mpitrans.job.lock import JobLock
from mpitrans.job.options import ALL_OF_EACH_FILE, JobOptions, check_single_target
from mpitrans.job.prepare import Job, Setup, plan_job, start
from mpitrans.job.rounds import execute
from mpitrans.job.stores import Store, StoreRequest, check_full_target, digests, split_store
from mpitrans.job.summary import RankStats, Summary
from mpitrans.job.transport import Transport, make_transport
from mpitrans.plan.coverage import check_world_size
from mpitrans.plan.planner import TargetPlan
from mpitrans.storage.base import remove_stale_temps
from mpitrans.storage.ckpt.crypto import CkptReading, CkptWriting, remove_stale_scratch
from mpitrans.storage.formats import target_format

log = logging.getLogger("mpitrans")

Placement = Callable[[Sequence[int], int], dict[int, int]]


def round_robin_placement(targets: Sequence[int], nprocs: int) -> dict[int, int]:
    """Target i on MPI rank i (mod the process count): a hostfile laid out like training puts each shard
    on the host that will load it."""
    return {t: t % nprocs for t in targets}


def rank_table_placement(t: Transport, path: str) -> Placement:
    """Rank 0 reads the HCCL rank table; every rank learns which server it runs on."""
    from mpitrans import cluster

    blob = agree(t, lambda: json.dumps(cluster.load(path).to_json()).encode() if t.rank == 0 else b"")
    table = cluster.from_json(json.loads(t.bcast_bytes(blob if t.rank == 0 else None)), path)
    return cluster.job_placement(table, t.allgather_bytes)


def place_targets(t: Transport, opts: JobOptions, setup: Setup, placement: Placement | None) -> dict[int, int]:
    """Collective: which process writes each target (`placement`, else the rank table's hosts, else target
    i on process i mod P), after checking MindFormers' `world_size` against the target count."""
    agree(t, lambda: check_world_size(opts.world_size, setup.targets))
    agree(t, lambda: check_single_target(opts.dst_file, setup.targets))
    if placement is None:
        placement = rank_table_placement(t, opts.rank_table) if opts.rank_table else round_robin_placement
    return agree(t, lambda: placement(setup.targets, t.size))


def transform(src_checkpoint: str, dst_checkpoint: str, src_strategy: str | None = None,
              dst_strategy: str | None = None, *, comm: object = None, placement: Placement | None = None,
              **options: object) -> Summary:
    """Reshard `src_checkpoint` into `dst_checkpoint/rank_x/{prefix}x.ckpt`; collective over `comm`.

    `comm` is an mpi4py communicator (default: COMM_WORLD when launched by mpirun, else this process
    alone); `options` are `JobOptions` fields (prefix, max_buffer, overwrite, resume, ...) with the same
    defaults as the command line. Bad input found before any byte is written raises `MpitransError`
    with the same message on every rank; a failure while bytes move ends the whole job.
    """
    opts = JobOptions(src_checkpoint, dst_checkpoint, src_strategy, dst_strategy, **options)  # type: ignore[arg-type]
    return run(opts, make_transport(comm), placement)


def run(opts: JobOptions, t: Transport, placement: Placement | None = None) -> Summary:
    """`transform` for a ready options object and transport (what the command line calls). With
    `opts.dry_run` it returns the plan (`dryrun.PlanReport`) and writes nothing."""
    if opts.dry_run:
        from mpitrans.job.dryrun import plan_report

        return plan_report(opts, t, placement)  # type: ignore[return-value]
    with JobGuard(t.abort, t.rank, watch_parent=t.size > 1, grace=0.5 if t.size > 1 else 5.0):
        try:
            return _Run(t, opts).go(placement)
        except JobError:
            raise  # every rank holds the same error: the caller reports it once
        except BaseException as exc:
            if t.size == 1:
                raise
            fail_job(t, exc)  # only this rank failed and its peers may wait for it: end the job now
            raise


def check_destination(dst_checkpoint: str, src_checkpoint: str, visible: dict[int, str]) -> None:
    """Refuse an output directory that is the source model_dir or lies inside a source rank directory:
    writing there would replace or mix with the files being read."""
    dst = os.path.realpath(dst_checkpoint)
    if os.path.isdir(src_checkpoint) and os.path.realpath(src_checkpoint) == dst:
        raise MpitransError(f"--dst-checkpoint {dst_checkpoint} is the source directory; write the targets "
                            f"to another directory")
    if os.path.isfile(src_checkpoint):
        return
    for g, path in sorted(visible.items()):
        rank_dir = os.path.realpath(path if os.path.isdir(path) else os.path.dirname(path))  # a _part dir: itself
        if dst == rank_dir or dst.startswith(rank_dir + os.sep):
            raise MpitransError(f"--dst-checkpoint {dst_checkpoint} is inside the source directory of rank {g} "
                                f"({rank_dir}); write the targets to another directory")


def sources_of(plan: TargetPlan) -> list[int]:
    """Every source rank a target may be built from (all data-parallel candidates)."""
    return sorted({g for x in plan.tensors for region in x.regions for g in region.candidates})


@dataclass
class _Run:
    t: Transport
    opts: JobOptions
    stats: RankStats = field(init=False)
    job: Job = field(init=False)
    where: dict[int, int] = field(init=False)
    identity: dict = field(init=False)
    fingerprints: dict[int, dict] = field(init=False)
    used: dict[int, list[int]] = field(init=False)  # target -> the source ranks it may be built from
    store: Store | None = None  # a full-model store: its parts are the targets
    start: float = field(default_factory=time.perf_counter)
    reading: CkptReading = field(init=False)
    writing: CkptWriting = field(init=False)

    def __post_init__(self) -> None:
        self.stats = RankStats(self.t.rank, socket.gethostname())

    def go(self, placement: Placement | None) -> Summary:
        """The job; private plaintext copies (encrypted files) are removed however it ends."""
        self.reading, self.writing = agree(self.t, self.opts.ckpt_files)
        try:
            return self._go(placement)
        finally:
            if self.reading.scratch is not None:
                self.reading.scratch.cleanup()

    def _go(self, placement: Placement | None) -> Summary:
        t, o = self.t, self.opts
        setup = start(t, o.src_checkpoint, o.src_strategy, o.dst_strategy, o.prefix, o.selection())
        self.stats.lap("strategies", self.start)
        self.where = place_targets(t, o, setup, placement)
        fmt = target_format(o.output_format)
        if fmt.store:
            agree(t, lambda: check_full_target(fmt, setup.targets, o.dst_strategy))
        self.job = plan_job(setup, self.where, o.strict, self.reading, plan_all=fmt.store)
        if fmt.store:
            self._split_store(setup)
        self.stats.phases.update({k: round(v, 4) for k, v in self.job.timings.items()})
        clock = time.perf_counter()
        agree(t, lambda: check_destination(o.dst_checkpoint, o.src_checkpoint, self.job.visible))
        self.used = {tr: sources_of(p) for tr, p in self.job.plans.items()}
        wanted = {g for blob in t.allgather_bytes(json.dumps(sorted({g for gs in self.used.values() for g in gs}))
                                                  .encode()) for g in json.loads(blob)}
        self.fingerprints = self._fingerprints(wanted)
        self.identity = manifest.job_identity(self.job.src_bytes, self.job.dst_bytes, o.prefix)
        if o.selection() != ALL_OF_EACH_FILE:  # filters and --src-postfix change the targets: resume only alike
            self.identity["selection"] = repr(o.selection())
        if self.writing.encrypted or self.writing.crc_check:  # other bytes: resume only a run that wrote alike
            self.identity["ckpt_output"] = f"{self.writing.mode if self.writing.encrypted else 'plain'}, crc " \
                                           f"{self.writing.crc_check}"
        if self.store is not None:  # --resume keeps a part only if it holds the same tensors
            self.identity["store"] = self.store.layout_digest()
        lock = JobLock(o.dst_checkpoint, t.bcast_bytes(uuid.uuid4().hex.encode() if t.rank == 0 else None).decode())
        agree(t, lambda: lock.acquire() if self.writes_here else None)
        if lock.stale:
            log.warning("took over the lock of an earlier mpitrans job that is no longer running (%s)", lock.stale)
        self.stats.lap("checks", clock)
        try:
            summary = self._locked()
        finally:
            lock.release()
        summary.wall_seconds = time.perf_counter() - self.start
        return summary

    def _split_store(self, setup: Setup) -> None:
        """Deal the full target to part files; this process keeps the parts it writes."""
        t, job = self.t, self.job
        fmt = target_format(self.opts.output_format)
        ask = StoreRequest(self.opts.store_files, setup.select.param_filter, self.opts.choice_func)
        # Rank 0 deals (it holds every file's metadata); the others follow its decision.
        blob = agree(t, lambda: split_store(fmt, job.plans[0], job.src, job.metas, t.size, ask).to_bytes()
                     if t.rank == 0 else b"")
        dealt = t.bcast_bytes(blob if t.rank == 0 else None)
        self.store = agree(t, lambda: Store.from_bytes(dealt, fmt, job.plans[0]))
        self.where = self.store.placement(t.size)
        job.plans = {p.rank: p for p in self.store.parts if self.where[p.rank] == t.rank}
        job.stems = {p.rank: p.stem for p in self.store.parts}

    @property
    def writes_here(self) -> bool:
        return any(r == self.t.rank for r in self.where.values()) or self.t.rank == 0

    def path_of(self, plan: TargetPlan) -> str:
        return os.path.join(self.opts.dst_checkpoint, self.relpath(plan.rank))

    def relpath(self, target: int) -> str:
        if self.store is not None:
            return self.store.names[target]
        return self.opts.relpath(target, self.job.stems[target])

    def _fingerprints(self, wanted: set[int]) -> dict[int, dict]:
        """Each used source file fingerprinted once, by the first process that sees it; known to all."""
        seers = self.job.seers
        mine = {str(g): manifest.fingerprint(self.job.visible[g]) for g in sorted(wanted)
                if g in seers and seers[g][0] == self.t.rank}
        out: dict[int, dict] = {}
        for blob in self.t.allgather_bytes(json.dumps(mine).encode()):
            out.update({int(k): v for k, v in json.loads(blob).items()})
        return out

    def _mine(self) -> list[int]:
        return sorted(tr for tr, r in self.where.items() if r == self.t.rank)

    def _locked(self) -> Summary:
        t = self.t
        kept_here = agree(t, self._keep_finished) if self.opts.resume else {}
        kept = {int(k) for b in t.allgather_bytes(json.dumps(kept_here).encode()) for k in json.loads(b)}
        agree(t, self._outputs_ready)
        fault_point("after-plan", t.rank)
        self.stats.targets = self._mine()
        todo = {tr: p for tr, p in self.job.plans.items() if tr not in kept}
        moves = replace(self.job.moves(todo, self.where), reading=self.reading, writing=self.writing)
        written = execute(t, moves, self.path_of, self.opts.max_buffer, self.stats, self._record_progress,
                          self.opts.show_progress)
        clock = time.perf_counter()
        if self.store is not None:
            self._write_store_index()
        mine = {tr: self._entry(tr, size, crc) for tr, (_, size, crc) in written.items()}
        mine.update({int(k): v for k, v in kept_here.items()})
        self._write_manifest(mine)
        self.stats.lap("finish", clock)
        self.stats.seconds = time.perf_counter() - self.start
        return self._summary()

    def _write_store_index(self) -> None:
        """Collective: once every part is published, each process that writes here writes the index (the
        same document: without a shared disk, every host's directory gets one)."""
        assert self.store is not None
        agree(self.t, lambda: None)  # every part is published before any index names it
        attrs = digests(self.job.src_bytes, self.fingerprints)
        agree(self.t, lambda: self.store.write_index(self.opts.dst_checkpoint, attrs) if self.writes_here else None)

    def _keep_finished(self) -> dict[int, dict]:
        """With --resume: this rank's targets that an earlier run of the same job completed."""
        dst = self.opts.dst_checkpoint
        old = manifest.read(dst)
        out = {}
        for tr in self._mine():
            rel = self.relpath(tr)
            decision = manifest.reusable(dst, old, self.identity, self.fingerprints, tr, rel)
            if decision.entry is None:
                second = manifest.reusable(dst, manifest.read_progress(dst, tr), self.identity, self.fingerprints,
                                           tr, rel)
                decision = second if second.entry is not None or second.why else decision
            if decision.entry is not None:
                out[tr] = decision.entry
            elif decision.why:
                log.warning("--resume: redoing target rank %d: %s", tr, decision.why)
        return out

    def _outputs_ready(self) -> None:
        """Checked, and cleared of a killed run's temporary files, before any rank writes anything: the
        agreement that follows keeps one rank's cleanup from meeting another's fresh temporary files."""
        for tr in self._mine():
            path = self.path_of(self.job.plans[tr])
            if os.path.isdir(path):
                raise MpitransError(f"{path} is a directory; remove it (a target file goes there)")
            if os.path.lexists(path) and not (self.opts.overwrite or self.opts.resume):
                raise MpitransError(f"{path} already exists; pass --overwrite to replace it (or --resume)")
            remove_stale_temps(path)
        if self.store is not None and self.writes_here:
            index = os.path.join(self.opts.dst_checkpoint, self.store.index_name)
            if os.path.lexists(index) and not (self.opts.overwrite or self.opts.resume):
                raise MpitransError(f"{index} already exists; pass --overwrite to replace it (or --resume)")
            remove_stale_temps(index)
        if self.writes_here:
            manifest.remove_stale_temps(self.opts.dst_checkpoint)
        remove_stale_scratch(self.opts.dst_checkpoint)  # plaintext copies of killed processes on this host

    def _entry(self, target: int, size: int, crc: int) -> dict:
        return {"path": self.relpath(target), "size": size, "crc32c": crc, "sources": self.used[target]}

    def _record_progress(self, target: int, size: int, crc: int) -> None:
        manifest.record_progress(self.opts.dst_checkpoint, self.identity, self.fingerprints, target,
                                 self._entry(target, size, crc))

    def _write_manifest(self, mine: dict[int, dict]) -> None:
        """Written last: every process that writes here writes the same document (atomically), so each
        host's output directory gets one even without a shared disk."""
        files_all: dict[int, dict] = {}
        for blob in self.t.allgather_bytes(json.dumps(mine).encode()):
            files_all.update({int(k): v for k, v in json.loads(blob).items()})
        dst = self.opts.dst_checkpoint
        if self.opts.write_manifest and self.writes_here:
            manifest.write(dst, manifest.build(self.identity, self.fingerprints, files_all))
        manifest.clear_progress(dst, self._mine())

    def _summary(self) -> Summary:
        ranks = [RankStats(**json.loads(b)) for b in self.t.allgather_bytes(json.dumps(asdict(self.stats)).encode())]
        paths = {tr: os.path.abspath(os.path.join(self.opts.dst_checkpoint, self.relpath(tr))) for tr in self.where}
        return Summary(os.path.abspath(self.opts.dst_checkpoint), paths, self.where, ranks, 0.0)
