"""`--dry-run`: the plan of a job, without touching its output.

Everything a transform decides before moving bytes (strategies, inventories, metadata, plans, placement,
reader assignment, chunking) runs as usual; then, instead of moving bytes, the schedule is walked to
count what each process would read, send, receive and write, and how many messages and rounds that
takes. Useful to check a placement or a hostfile before a long job, and for scripts (`--json`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from math import prod

from mpitrans.errors import MpitransError
from mpitrans.job.agree import agree
from mpitrans.job.exchange import exchange_asks, remote_pieces, round_sizes
from mpitrans.job.options import JobOptions
from mpitrans.job.prepare import plan_job, start
from mpitrans.job.rounds import chunk_size, my_chunks
from mpitrans.job.run import Placement, place_targets
from mpitrans.job.summary import human_size
from mpitrans.job.transport import Transport
from mpitrans.metadata import itemsize
from mpitrans.storage.formats import target_format


@dataclass
class ProcessPlan:
    rank: int
    targets: list[int] = field(default_factory=list)
    bytes_read: int = 0  # from its own disk
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_written: int = 0
    messages: int = 0  # point-to-point messages it sends


@dataclass
class PlanReport:
    dst_checkpoint: str
    targets: dict[int, dict]  # target rank -> {path, tensors, bytes, writer}
    processes: list[ProcessPlan]
    rounds: int
    messages: int  # point-to-point messages (one per reader -> writer pair per round)
    chunk_bytes: int

    def to_json(self) -> dict:
        return asdict(self)


def plan_report(opts: JobOptions, t: Transport, placement: Placement | None = None) -> PlanReport:
    """Collective: the job's plan and its traffic, the same on every process; writes nothing. Each
    process counts its own part (what it writes, reads, sends and receives); the parts are gathered."""
    if target_format(opts.output_format).store:  # the same refusal on every rank, before any collective
        raise MpitransError(f"--dry-run does not plan --output-format {opts.output_format} stores yet")
    setup = start(t, opts.src_checkpoint, opts.src_strategy, opts.dst_strategy, opts.prefix, opts.selection())
    where = place_targets(t, opts, setup, placement)
    reading, _ = agree(t, lambda: opts.ckpt_files(tempfile.gettempdir()))
    try:  # encrypted sources are indexed through private copies, removed at once
        job = plan_job(setup, where, opts.strict, reading)
    finally:
        if reading.scratch is not None:
            reading.scratch.cleanup()
    chunk_bytes = chunk_size(opts.max_buffer, t.size)
    moves = job.moves(job.plans, where)
    chunks = my_chunks(t, moves, chunk_bytes)
    remote = [remote_pieces(c, t.rank) for c in chunks]
    asks = exchange_asks(t, remote)
    me, targets = _count(t.rank, job.plans, lambda tr: opts.relpath(tr, job.stems[tr]), chunks, remote, asks)
    rounds = max((len(s) for s in round_sizes(t, chunks)), default=0)
    procs, all_targets = [], {}
    for blob in t.allgather_bytes(json.dumps([asdict(me), targets]).encode()):
        proc, tgts = json.loads(blob)
        procs.append(ProcessPlan(**proc))
        all_targets.update({int(k): v for k, v in tgts.items()})
    messages = sum(p.messages for p in procs)
    return PlanReport(opts.dst_checkpoint, dict(sorted(all_targets.items())), procs, rounds, messages, chunk_bytes)


def _count(rank: int, plans: dict, relpath: Callable[[int], str], chunks: list, remote: list,
           asks: dict) -> tuple[ProcessPlan, dict]:
    """This process's traffic, counted as the rounds would move it (a region wanted twice in one round is
    read once)."""
    me = ProcessPlan(rank)
    targets = {}
    for tr, plan in sorted(plans.items()):
        written = [x for x in plan.tensors if x.written]
        nbytes = sum(prod(x.shape) * itemsize(x.dtype) for x in written)
        targets[tr] = {"path": relpath(tr), "tensors": len(written),
                       "bytes": nbytes, "writer": rank}
        me.targets.append(tr)
        me.bytes_written += nbytes
    for k in range(max([len(chunks), *(r + 1 for r in asks)], default=0)):
        read: set = set()
        own = chunks[k] if k < len(chunks) else None
        for p in own.pieces if own is not None else ():
            if p.reader == rank and (p.src_rank, p.tensor, p.src_box) not in read:
                read.add((p.src_rank, p.tensor, p.src_box))
                me.bytes_read += p.nbytes
        for wanted in remote[k].values() if own is not None else ():
            me.bytes_received += sum(ask.nbytes for ask, _ in wanted)
        for pieces in asks.get(k, {}).values():
            me.messages += 1
            for a in pieces:
                me.bytes_sent += a.nbytes
                if (a.src_rank, a.tensor, a.src_box) not in read:
                    read.add((a.src_rank, a.tensor, a.src_box))
                    me.bytes_read += a.nbytes
    return me, targets


def format_report(report: PlanReport) -> str:
    total = sum(t["bytes"] for t in report.targets.values())
    lines = [f"mpitrans: dry run: {len(report.targets)} target rank(s), {human_size(total)}, under "
             f"{report.dst_checkpoint} (nothing written); {report.rounds} round(s) of chunks up to "
             f"{human_size(report.chunk_bytes)}, {report.messages} message(s)",
             f"  {'rank':>4} {'targets':<12} {'read':>10} {'sent':>10} {'received':>10} {'written':>10}"]
    for p in report.processes:
        tgts = ",".join(map(str, p.targets)) or "-"
        lines.append(f"  {p.rank:>4} {tgts[:12]:<12} {human_size(p.bytes_read):>10} {human_size(p.bytes_sent):>10} "
                     f"{human_size(p.bytes_received):>10} {human_size(p.bytes_written):>10}")
    return "\n".join(lines)
