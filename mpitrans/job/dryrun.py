"""`--dry-run`: the plan of a job, without touching its output.

Everything a transform decides before moving bytes (strategies, inventories, metadata, plans, placement,
reader assignment, chunking) runs as usual; then, instead of moving bytes, the schedule is walked to
count what each process would read, send, receive and write, and how many messages and rounds that
takes. Useful to check a placement or a hostfile before a long job, and for scripts (`--json`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from math import prod

from mpitrans.job.agree import agree
from mpitrans.job.options import JobOptions
from mpitrans.job.prepare import prepare
from mpitrans.job.rounds import Moves, chunk_size
from mpitrans.job.run import Placement, rank_table_placement, round_robin_placement
from mpitrans.job.summary import human_size
from mpitrans.job.transport import Transport
from mpitrans.metadata import itemsize
from mpitrans.plan.schedule import build_chunks
from mpitrans.storage.formats import target_filename


@dataclass
class ProcessPlan:
    rank: int
    targets: list[int] = field(default_factory=list)
    bytes_read: int = 0  # from its own disk
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_written: int = 0


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
    """Collective: the job's plan and its traffic, identical on every process; writes nothing."""
    job = prepare(t, opts.src_checkpoint, opts.src_strategy, opts.dst_strategy, opts.prefix, opts.strict)
    if placement is None:
        placement = rank_table_placement(t, opts.rank_table) if opts.rank_table else round_robin_placement
    where = agree(t, lambda: placement(sorted(job.plans), t.size))
    moves = Moves(job.plans, where, job.seers, job.visible, job.metas, job.file_ids)
    procs = [ProcessPlan(r) for r in range(t.size)]
    targets = {}
    for tr, plan in sorted(job.plans.items()):
        nbytes = sum(prod(x.shape) * itemsize(x.dtype) for x in plan.tensors)
        name = target_filename(plan.stem, opts.output_format)
        targets[tr] = {"path": f"rank_{tr}/{name}", "tensors": len(plan.tensors), "bytes": nbytes,
                       "writer": where[tr]}
        procs[where[tr]].targets.append(tr)
        procs[where[tr]].bytes_written += nbytes
    chunk_bytes = chunk_size(opts.max_buffer, t.size)
    rounds, messages = _walk(moves, chunk_bytes, procs)
    return PlanReport(opts.dst_checkpoint, targets, procs, rounds, messages, chunk_bytes)


def _walk(moves: Moves, chunk_bytes: int, procs: list[ProcessPlan]) -> tuple[int, int]:
    """Count bytes and messages round by round, as the rounds would move them."""
    table = moves.readers()
    gens = {}
    for w in sorted(set(moves.placement.values())):
        mine = [moves.plans[tr] for tr in sorted(moves.plans) if moves.placement[tr] == w]
        gens[w] = build_chunks(mine, chunk_bytes, table)
    rounds = messages = 0
    while gens:
        pairs: set[tuple[int, int]] = set()
        read_once: dict[int, set] = defaultdict(set)  # a region wanted twice in a round is read once
        for w in list(gens):
            chunk = next(gens[w], None)
            if chunk is None:
                del gens[w]
                continue
            for p in chunk.pieces:
                key = (p.src_rank, p.tensor, p.src_box)
                if key not in read_once[p.reader]:
                    read_once[p.reader].add(key)
                    procs[p.reader].bytes_read += p.nbytes
                if p.reader != w:
                    procs[p.reader].bytes_sent += p.nbytes
                    procs[w].bytes_received += p.nbytes
                    pairs.add((p.reader, w))
        if gens or pairs:
            rounds += 1
        messages += len(pairs)
    return rounds, messages


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
