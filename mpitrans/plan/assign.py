"""Who reads what: every region of every target assigned to one process and one source replica.

The planner says which source shards hold each region of each target (all data-parallel replicas are
candidates); this module picks, for each region, the MPI process that reads it and the replica it
reads, as a table the schedule consumes. The rules, in order:

1. a writer that can see a candidate file reads it itself (no network);
2. a region several writers need (replicated targets) is read once per shared disk: a later writer that
   sees the *same* file (same host, device and inode) as the first reader receives it from that reader.
   "First" counts from a writer chosen by the region's first candidate (`_rotation`), so the reads of a
   replicated tensor, whose regions come from many source files, spread over its writers;
3. otherwise the region goes to the least-loaded process that sees a candidate (spreading reads over
   data-parallel replicas and hosts), and every writer that needs it receives it from that reader.

Regions are grouped by identity (tensor, source box, candidates): the processes that want one region
are decided together (`assign_region`), in target order rotated as rule 2 says, so the outcome does
not depend on which process computes it. In a job each region identity is decided by one "owner"
process that all wanting writers ask, or by each writer alone where it can name them all (see
`job.exchange`); `assign_readers` decides every region of a set of plans in one process.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
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


RegionKey = tuple  # (tensor name, source box, candidates): regions equal in this hold identical bytes


def region_key(name: str, region: Region) -> RegionKey:
    return (name, region.src_box, region.candidates)


def _rotation(candidates: tuple[int, ...], n: int) -> int:
    """Where in the writers' target order deciding starts: spread by source file, so regions read from
    different files (a replicated tensor's optimizer shards) are read by different writers."""
    return candidates[0] % n if candidates and n > 1 else 0


def _decide(chooser: _Chooser, name: str, region: Region, writers: Sequence[int]) -> list[tuple[int, int]]:
    """`chooser`'s answer for each writer (in the order given), the writers taken from `_rotation` on."""
    n = len(writers)
    out: list[tuple[int, int]] = [(0, 0)] * n
    start = _rotation(region.candidates, n)
    for i in range(n):
        j = (start + i) % n
        out[j] = chooser.choose(writers[j], name, region)
    return out


def assign_region(chooser: _Chooser, key: RegionKey, dst_box: tuple, writers: Sequence[int]) -> list[tuple[int, int]]:
    """(reader, source rank) for each wanting writer, in the order given (target order)."""
    name, src_box, candidates = key
    return _decide(chooser, name, Region(dst_box, src_box, candidates), writers)


class Alone:
    """The choices for a region every writer can work out by itself: the writers wanting it are known
    (the processes of the targets holding the same box, in target order) and the first of them in
    deciding order (`_rotation`) sees a candidate, so rules 1 and 2 decide them all and no load count is
    involved. The outcome equals what the region's owner would decide; it depends only on (candidates,
    writers), so it is computed once per such pair."""

    def __init__(self, seers: Mapping[int, Sequence[int]], file_ids: FileIds | None = None) -> None:
        self.seers = seers
        self.file_ids = file_ids or {}
        # (candidates, id of a writers tuple) -> (that tuple, kept alive, choices)
        self._seen: dict[tuple, tuple[tuple[int, ...], list[tuple[int, int]] | None]] = {}

    def choices(self, candidates: tuple[int, ...], writers: tuple[int, ...]) -> list[tuple[int, int]] | None:
        """(reader, source rank) per writer, or None when the first writer sees no candidate (the owner
        then decides, balancing load). Callers pass one shared tuple per writer list."""
        key = (candidates, id(writers))
        found = self._seen.get(key)
        if found is not None:
            return found[1]
        first = writers[_rotation(candidates, len(writers))]
        out = None
        if any(first in self.seers.get(g, ()) for g in candidates):
            out = _decide(_Chooser(self.seers, self.file_ids), "", Region((), (), candidates), writers)
        self._seen[key] = (writers, out)
        return out


def new_chooser(seers: Mapping[int, Sequence[int]], file_ids: FileIds | None = None) -> _Chooser:
    return _Chooser(seers, file_ids or {})


def assign_readers(plans: Mapping[int, TargetPlan], placement: Mapping[int, int],
                   seers: Mapping[int, Sequence[int]], file_ids: FileIds | None = None) -> ReaderTable:
    """The reader of every region of `plans`, each region identity decided for all its writers at once."""
    chooser = _Chooser(seers, file_ids or {})
    wants: dict[RegionKey, list[tuple[int, int, int]]] = defaultdict(list)
    boxes: dict[RegionKey, tuple] = {}
    for tr in sorted(plans):
        for ki, tensor in enumerate(plans[tr].tensors):
            for ri, region in enumerate(tensor.regions):
                key = region_key(tensor.name, region)
                wants[key].append((tr, ki, ri))
                boxes.setdefault(key, region.dst_box)
    table: ReaderTable = {}
    for key, who in wants.items():
        choices = assign_region(chooser, key, boxes[key], [placement[tr] for tr, _, _ in who])
        table.update(zip(who, choices, strict=True))
    return table
