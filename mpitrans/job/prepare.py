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
import struct
from dataclasses import dataclass

from mpitrans import strategy
from mpitrans.job.agree import JobError, agree
from mpitrans.job.inventory import Inventory, gather_inventory
from mpitrans.job.options import ALL_OF_EACH_FILE, Selection
from mpitrans.job.transport import Transport
from mpitrans.metadata import TensorMeta
from mpitrans.plan.consistency import check_sources, probe_ranks, source_scope
from mpitrans.plan.coverage import check_coverage, check_models_match, files_to_index, needed_sources, plan_targets
from mpitrans.plan.planner import Planner, TargetPlan
from mpitrans.storage.discover import rank_dirs_without_checkpoint
from mpitrans.storage.formats import open_source
from mpitrans.strategy.model import StrategyFile

_ABSENT = (1 << 64) - 1  # length marker of a strategy that was not given


@dataclass
class Job:
    """Everything every rank agrees on before any byte moves."""

    src: StrategyFile | None
    dst: StrategyFile | None
    src_bytes: bytes | None
    dst_bytes: bytes | None
    inventory: Inventory
    needed: set[int]
    metas: dict[int, list[TensorMeta]]
    plans: dict[int, TargetPlan]

    @property
    def visible(self) -> dict[int, str]:
        return self.inventory.visible

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


def broadcast_strategies(t: Transport, src_strategy: str | None,
                         dst_strategy: str | None) -> tuple[bytes | None, bytes | None]:
    """Read on rank 0 only (a per-stage directory is merged there), broadcast as raw bytes."""
    def load() -> bytes:
        if t.rank != 0:
            return b""
        return _frame([strategy.to_bytes(strategy.load(p)) if p else None for p in (src_strategy, dst_strategy)])

    payload = agree(t, load)
    src_bytes, dst_bytes = _unframe(t.bcast_bytes(payload if t.rank == 0 else None), 2)
    return src_bytes, dst_bytes


def _metas_to_json(metas: dict[int, list[TensorMeta]]) -> bytes:
    return json.dumps({str(r): [[m.name, m.dtype, list(m.shape)] for m in ms] for r, ms in metas.items()}).encode()


def _metas_from_json(data: bytes) -> dict[int, list[TensorMeta]]:
    raw = json.loads(data.decode()) if data else {}
    return {int(r): [TensorMeta(n, d, tuple(s)) for n, d, s in ms] for r, ms in raw.items()}


def gather_metadata(t: Transport, inv: Inventory, to_index: list[int]) -> dict[int, list[TensorMeta]]:
    """Each file indexed by one of the processes that see it (spread round-robin), then shared."""
    def index_mine() -> bytes:
        metas: dict[int, list[TensorMeta]] = {}
        for i, g in enumerate(to_index):
            owners = inv.seers[g]
            if owners[i % len(owners)] != t.rank:
                continue
            reader = open_source(inv.paths[t.rank][g])
            try:
                metas[g] = reader.tensors()
            finally:
                reader.close()
        return _metas_to_json(metas)

    mine = agree(t, index_mine)
    metas: dict[int, list[TensorMeta]] = {}
    for blob in t.allgather_bytes(mine):
        metas.update(_metas_from_json(blob))
    return metas


def prepare(t: Transport, src_checkpoint: str, src_strategy: str | None, dst_strategy: str | None,
            prefix: str, strict: bool = True, select: Selection = ALL_OF_EACH_FILE) -> Job:
    """Collective: strategies, inventories, metadata, plans; one agreed error on bad input."""
    src_bytes, dst_bytes = broadcast_strategies(t, src_strategy, dst_strategy)
    src = strategy.from_bytes(src_bytes) if src_bytes else None
    dst = strategy.from_bytes(dst_bytes) if dst_bytes else None

    inv = gather_inventory(t, src_checkpoint, select.src_postfix)
    if not inv.seers:
        empty = rank_dirs_without_checkpoint(src_checkpoint)
        hint = f" ({', '.join(empty)} hold no checkpoint file)" if empty else ""
        raise JobError(f"no source checkpoint found under {src_checkpoint}{hint}")

    needed = agree(t, lambda: needed_sources(src, dst, prefix))
    to_index = files_to_index(needed, inv.seers)
    to_index = sorted(set(to_index) | probe_ranks(source_scope(src, dst, prefix), inv.seers))
    metas = gather_metadata(t, inv, to_index)
    paths = {g: inv.path_of(g) for g in inv.seers}
    metas = agree(t, lambda: check_sources(src, dst, metas, paths, inv.seers, src_checkpoint, prefix))
    if strict:
        agree(t, lambda: check_models_match(src, dst, metas))

    def make_plans() -> dict[int, TargetPlan]:
        plans = plan_targets(Planner(src, dst, metas, prefix, select.param_filter), needed, inv.seers, src_checkpoint)
        check_coverage(plans, needed, inv.seers, metas, src_checkpoint)
        return plans

    plans = agree(t, make_plans)
    return Job(src, dst, src_bytes, dst_bytes, inv, needed, metas, plans)
