"""Who reads what: every region of every target assigned to one process and one source replica.

The planner says which source shards hold each region of each target (all data-parallel replicas are
candidates); this module picks, for each region, the MPI process that reads it and the replica it
reads, as a table the schedule consumes. The rules, in order:

1. a writer that can see a candidate file reads it itself (no network);
2. a region several writers need (replicated targets) is read once per shared disk: a later writer that
   sees the *same* file (same host, device and inode) as the first reader receives it from that reader;
3. otherwise the region goes to the least-loaded process that sees a candidate (spreading reads over
   data-parallel replicas and hosts), and every writer that needs it receives it from that reader.

The table is a pure function of the plans, the placement and who sees which file, so every process
computes the same one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import zip_longest
from math import prod

from mpitrans.errors import MissingShardError
from mpitrans.plan.layout import box_shape
from mpitrans.plan.planner import Region, TargetPlan

# (target rank, tensor index, region index) -> (reading MPI rank, source rank read)
ReaderTable = dict[tuple[int, int, int], tuple[int, int]]
FileIds = Mapping[int, Mapping[int, tuple]]  # source rank -> MPI rank -> (host, st_dev, st_ino)


class _Chooser:
    def __init__(self, seers: Mapping[int, Sequence[int]], file_ids: FileIds) -> None:
        self.seers = seers
        self.file_ids = file_ids
        self.load: dict[int, int] = defaultdict(int)
        self.first: dict[tuple, tuple[int, int]] = {}  # region identity -> first assignment

    def same_file(self, g: int, r1: int, r2: int) -> bool:
        a, b = self.file_ids.get(g, {}).get(r1), self.file_ids.get(g, {}).get(r2)
        return a is not None and a == b

    def choose(self, writer: int, name: str, region: Region) -> tuple[int, int]:
        key = (name, region.src_box, region.candidates)
        prev = self.first.get(key)
        local = [g for g in region.candidates if writer in self.seers.get(g, ())]
        if local:
            if prev is not None and prev[0] != writer and prev[1] in local and self.same_file(prev[1], prev[0],
                                                                                               writer):
                return prev
            choice = (writer, local[0])
            self.first.setdefault(key, choice)
            return choice
        if prev is not None:
            return prev
        best = None
        for g in region.candidates:
            for r in self.seers.get(g, ()):
                if best is None or self.load[r] < self.load[best[0]]:
                    best = (r, g)
        if best is None:  # coverage is checked before planning ends; kept as a guard
            raise MissingShardError(f"no process sees a source file for {name!r}")
        self.load[best[0]] += prod(box_shape(region.dst_box))
        self.first[key] = best
        return best


def assign_readers(plans: Mapping[int, TargetPlan], placement: Mapping[int, int],
                   seers: Mapping[int, Sequence[int]], file_ids: FileIds | None = None) -> ReaderTable:
    """The reader of every region. Writers are visited in turn, tensor by tensor, so early regions of
    every writer get the first pick of readers and the load spreads as the job advances."""
    chooser = _Chooser(seers, file_ids or {})
    per_writer: dict[int, list[tuple[int, int, object]]] = defaultdict(list)
    for tr in sorted(plans):
        for ki, tensor in enumerate(plans[tr].tensors):
            per_writer[placement[tr]].append((tr, ki, tensor))
    table: ReaderTable = {}
    for step in zip_longest(*(per_writer[w] for w in sorted(per_writer))):
        for w, item in zip(sorted(per_writer), step, strict=True):
            if item is None:
                continue
            tr, ki, tensor = item
            for ri, region in enumerate(tensor.regions):
                table[(tr, ki, ri)] = chooser.choose(w, tensor.name, region)
    return table
