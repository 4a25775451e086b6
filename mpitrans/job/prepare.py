"""Before any byte moves: strategies, inventories, metadata and plans, agreed on by every process.

1. Rank 0 reads (and merges) the strategy files and broadcasts them as raw bytes; every rank parses them.
2. Every rank lists what its disk holds (`inventory`).
3. Each needed source file is indexed once, by one process that sees it; the metadata is gathered.
4. The metadata is checked against the strategies and across files (`plan.consistency`), then every
   target is planned and every planned region checked to have a readable file (`plan.coverage`).

Each step that can fail on bad input ends in `agree`, so one bad file stops every rank with the same
message and nothing is written.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from mpitrans import strategy
from mpitrans.job.agree import JobError, agree
from mpitrans.job.inventory import Inventory, gather_inventory
from mpitrans.job.metadata import SourceMetadata, index_sources
from mpitrans.job.options import ALL_OF_EACH_FILE, Selection
from mpitrans.job.rounds import Moves
from mpitrans.job.transport import Transport
from mpitrans.metadata import TensorMeta
from mpitrans.plan.consistency import check_sources, probe_ranks, source_scope
from mpitrans.plan.coverage import (
    check_coverage,
    check_models_match,
    files_to_index,
    needed_by,
    plan_targets,
    replica_files,
)
from mpitrans.plan.misfit import Misfit, describe, misfits
from mpitrans.plan.planner import Planner, TargetPlan
from mpitrans.storage.ckpt.crypto import CkptReading
from mpitrans.storage.discover import rank_dirs_without_checkpoint
from mpitrans.strategy.model import StrategyFile

log = logging.getLogger("mpitrans")
_ABSENT = (1 << 64) - 1  # length marker of a strategy that was not given


@dataclass
class Job:
    """What this process knows before any byte moves: the strategies, who sees which file, the plans of
    the targets it writes, and the metadata (as exported indexes) of the source files it needs."""

    src: StrategyFile | None
    dst: StrategyFile | None
    src_bytes: bytes | None
    dst_bytes: bytes | None
    inventory: Inventory
    metas: dict[int, list[TensorMeta]]
    plans: dict[int, TargetPlan]  # only the targets this process writes
    sources: SourceMetadata | None = None  # exported indexes: held, and fetched on demand
    timings: dict[str, float] = field(default_factory=dict)  # seconds: index, metadata, plan
    stems: dict[int, str] = field(default_factory=dict)  # every target -> its file name without suffix

    @property
    def visible(self) -> dict[int, str]:
        return self.inventory.visible

    def moves(self, plans: dict[int, TargetPlan], where: Mapping[int, int] | None = None) -> Moves:
        """What the byte-moving phase needs to assemble `plans` (some or all of this process's); `where`:
        the process writing each target of the job, when every process agreed on it."""
        return Moves(plans, self.seers, self.visible, self.metas, self.file_ids, self.sources, where)

    @property
    def seers(self) -> dict[int, list[int]]:
        return self.inventory.seers

    @property
    def file_ids(self) -> dict[int, dict[int, tuple]]:
        return self.inventory.file_ids


def _frame(parts: list[bytes | None]) -> bytes:
    head = b"".join(struct.pack("<Q", _ABSENT if p is None else len(p)) for p in parts)
    return head + b"".join(p for p in parts if p is not None)


def _unframe(data: bytes, count: int) -> list[bytes | None]:
    lengths = struct.unpack_from(f"<{count}Q", data)
    pos, out = 8 * count, []
    for n in lengths:
        if n == _ABSENT:
            out.append(None)
        else:
            out.append(data[pos:pos + n])
            pos += n
    return out


def broadcast_strategies(t: Transport, src_strategy: str | None, dst_strategy: str | None) -> tuple:
    """Read on rank 0 only and broadcast as raw bytes (a file's own bytes; a per-stage directory's files),
    then parsed (and merged) by every process at once, so no parse waits for another. Returns both
    payloads (the job's identity) and the parsed strategies."""
    def read() -> bytes:
        if t.rank != 0:
            return b""
        return _frame([strategy.load_payload(p) if p else None for p in (src_strategy, dst_strategy)])

    payload = agree(t, read)
    src_bytes, dst_bytes = _unframe(t.bcast_bytes(payload if t.rank == 0 else None), 2)
    parsed = agree(t, lambda: [strategy.load_from_payload(b) if b else None for b in (src_bytes, dst_bytes)])
    return src_bytes, dst_bytes, parsed


@dataclass
class Setup:
    """The first, cheap half of preparing: strategies, inventory, and the list of targets."""

    t: Transport
    src_checkpoint: str
    prefix: str
    src: StrategyFile | None
    dst: StrategyFile | None
    src_bytes: bytes | None
    dst_bytes: bytes | None
    inventory: Inventory
    shape_only: Planner  # a planner without metadata: target list, names, MindSpore's rank lists
    select: Selection = ALL_OF_EACH_FILE  # which file of each rank_x, which parameters

    @property
    def targets(self) -> list[int]:
        return self.shape_only.target_ranks()

    def stem(self, target: int) -> str:
        return self.shape_only.stem(target)


def start(t: Transport, src_checkpoint: str, src_strategy: str | None, dst_strategy: str | None,
          prefix: str, select: Selection = ALL_OF_EACH_FILE) -> Setup:
    """Collective: strategies (read once, broadcast as raw bytes) and who sees which source file."""
    src_bytes, dst_bytes, (src, dst) = broadcast_strategies(t, src_strategy, dst_strategy)
    inv = gather_inventory(t, src_checkpoint, select.src_postfix)
    if not inv.seers:
        empty = rank_dirs_without_checkpoint(src_checkpoint)
        hint = f" ({', '.join(empty)} hold no checkpoint file)" if empty else ""
        raise JobError(f"no source checkpoint found under {src_checkpoint}{hint}")
    shape_only = agree(t, lambda: Planner(src, dst, {}, prefix))
    return Setup(t, src_checkpoint, prefix, src, dst, src_bytes, dst_bytes, inv, shape_only, select)


def _index_replicas(setup: Setup, sources: SourceMetadata, needed: set[int], reading: CkptReading | None) -> bool:
    """Collective: when a needed file lacks parameters of its stage (a de-duplicated source), index the
    stage's other files too, so each slice can be read from the replica that kept it. Rank 0 decides
    from the needed files' metadata. True when files were added."""
    t = setup.t
    sources.fetch(needed if t.rank == 0 else ())

    def decide() -> bytes:
        if t.rank != 0:
            return b""
        files = replica_files(setup.shape_only, sources.metas(needed), needed, setup.inventory.seers)
        return json.dumps([g for g in files if g not in sources.hashes]).encode()

    payload = agree(t, decide)
    extra = json.loads(t.bcast_bytes(payload if t.rank == 0 else None))
    if not extra:
        return False
    sources.absorb(index_sources(t, setup.inventory, extra, reading))
    return True


def warn_misfits(t: Transport, found: list[Misfit]) -> None:
    """Collective: one warning on rank 0 for the tensors every process found copied in a shape the
    destination does not fit (`plan.misfit`); the output is unchanged."""
    mine = json.dumps([[m.name, m.target, m.shape, m.expected, m.why] for m in found]).encode()
    every = [Misfit(n, tr, tuple(s), tuple(e), w) for blob in t.allgather_bytes(mine)
             for n, tr, s, e, w in json.loads(blob)]
    if every and t.rank == 0:
        log.warning("%s", describe(every))


def plan_job(setup: Setup, where: dict[int, int], strict: bool = True, reading: CkptReading | None = None,
             plan_all: bool = False) -> Job:
    """Collective: metadata of the needed files, checks, and the plans of this process's targets.

    Every process plans only the targets `where` gives it, so planning costs grow with what a process
    writes, not with the job. `reading`: CRC checks and keys for the `.ckpt` files indexed here;
    `plan_all`: every target (a store's full target, dealt to parts later)."""
    t, src, dst, inv, prefix = setup.t, setup.src, setup.dst, setup.inventory, setup.prefix
    mine = list(setup.targets) if plan_all else [tr for tr in setup.targets if where[tr] == t.rank]
    needed_here = agree(t, lambda: needed_by(setup.shape_only, mine))
    needed = {g for blob in t.allgather_bytes(json.dumps(sorted(needed_here)).encode()) for g in json.loads(blob)}
    probes = probe_ranks(source_scope(src, dst, prefix), inv.seers)
    to_index = sorted(set(files_to_index(needed, inv.seers)) | probes)
    clock = time.perf_counter()
    sources = index_sources(t, inv, to_index, reading)
    timings = {"index": time.perf_counter() - clock}
    clock = time.perf_counter()
    dedup_stages = _index_replicas(setup, sources, needed, reading)
    # Rank 0 checks the whole source (each distinct structure once); every process checks what it plans
    # with: its targets' files and their structural twins (replicas, more files to read from) and, for a
    # de-duplicated source, every file of their stages.
    known = set(sources.hashes) if t.rank == 0 else sources.twins(needed_here)
    if dedup_stages:
        sd = setup.shape_only.src_stage_devices
        mine_stages = {g // sd for g in needed_here}
        known |= {g for g in sources.hashes if g // sd in mine_stages}
    sources.fetch(known)
    metas = sources.metas(known)
    paths = {g: inv.path_of(g) for g in inv.seers}
    metas = agree(t, lambda: check_sources(src, dst, metas, paths, inv.seers, setup.src_checkpoint, prefix))
    if strict:
        agree(t, lambda: check_models_match(src, dst, metas, prefix) if t.rank == 0 else None)

    timings["metadata"] = time.perf_counter() - clock
    clock = time.perf_counter()

    def make_plans() -> tuple[dict[int, TargetPlan], list[Misfit]]:
        planner = Planner(src, dst, metas, prefix, setup.select.param_filter, setup.select.lora)
        plans = plan_targets(planner, mine, needed, inv.seers, setup.src_checkpoint)
        check_coverage(plans, needed_here, inv.seers, metas, setup.src_checkpoint)
        return plans, misfits(planner, plans.values())

    plans, found = agree(t, make_plans)
    warn_misfits(t, found)
    timings["plan"] = time.perf_counter() - clock
    stems = {tr: setup.stem(tr) for tr in setup.targets}
    return Job(src, dst, setup.src_bytes, setup.dst_bytes, inv, metas, plans, sources=sources, stems=stems,
               timings=timings)
