"""De-duplicated sources: checkpoints saved with `remove_redundancy`, where each data-parallel replica
keeps a different subset of the parameters.

MindSpore's `ModelCheckpoint(remove_redundancy=True)` (and `save_checkpoint(..., choice_func=...)` driven by
`get_parameter_redundancy` / `remove_param_redundancy`) groups the ranks holding the same slice of a
parameter and lets only one rank of each group save it; parameters outside the strategy stay in every file.
Every file is still the network's parameter list in the network's order, with names left out. So:

* the bytes of a (parameter, slice) can be read from any rank of its replica group that kept it: the
  planner's candidates already range over the replicas of a slice, they only need the other ranks'
  files to be indexed (`stage_ranks`);
* the full list a rank would have held, in order, is recovered by merging the lists of its pipeline
  stage's files (`merged_order`), each of which is a subsequence of that order. Two names that no file
  shows side by side are ordered by a tie-break: the safetensors layout order when every file is in it
  (then the merge is exact), otherwise the order of the source strategy, which is the network's order
  when the strategy was written in it.

Pure functions of names, shapes and layouts.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from functools import lru_cache

from mpitrans.metadata import TensorMeta
from mpitrans.plan.layout import device_box, flatten_layout, origin_shape
from mpitrans.strategy.model import ParamLayout

__all__ = ["incomplete_stages", "merged_order", "replica_groups", "stage_ranks"]


def merged_order(lists: Sequence[Sequence[str]], key: Callable[[str], object]) -> list[str]:
    """One order of every name in `lists` that keeps each list's own order; where the lists leave two
    names unordered, the smaller `key` goes first. Lists that contradict each other (files of different
    networks, which the consistency checks refuse) still give every name once."""
    after: dict[str, set[str]] = defaultdict(set)
    blocked: dict[str, int] = {}
    for names in lists:
        for n in names:
            blocked.setdefault(n, 0)
        for a, b in zip(names, names[1:], strict=False):
            if b not in after[a]:
                after[a].add(b)
                blocked[b] += 1
    ready = [(key(n), i, n) for i, n in enumerate(blocked) if blocked[n] == 0]
    heapq.heapify(ready)
    pos = {n: i for i, n in enumerate(blocked)}
    out: list[str] = []
    while len(out) < len(blocked):
        if not ready:  # a contradiction: release the smallest remaining name
            rest = min((n for n in blocked if blocked[n] > 0), key=lambda n: (key(n), pos[n]))
            blocked[rest] = 0
            heapq.heappush(ready, (key(rest), pos[rest], rest))
        _, _, n = heapq.heappop(ready)
        if blocked[n] < 0:
            continue
        blocked[n] = -1
        out.append(n)
        for m in after.get(n, ()):
            if blocked[m] > 0:
                blocked[m] -= 1
                if blocked[m] == 0:
                    heapq.heappush(ready, (key(m), pos[m], m))
    return out


def incomplete_stages(metas: Mapping[int, Sequence[TensorMeta]], stage_devices: int) -> set[int]:
    """The pipeline stages whose indexed files do not all hold the same names: de-duplicated stages
    (files of one stage hold the same names otherwise, which the consistency checks enforce)."""
    names: dict[int, set[frozenset[str]]] = defaultdict(set)
    seen: dict[int, frozenset[str]] = {}
    for g, ms in metas.items():
        if id(ms) not in seen:
            seen[id(ms)] = frozenset(t.name for t in ms)
        names[g // stage_devices].add(seen[id(ms)])
    return {s for s, sets in names.items() if len(sets) > 1}


def stage_ranks(needed: Iterable[int], metas: Mapping[int, Sequence[TensorMeta]],
                stage_layouts: Mapping[int, Mapping[str, ParamLayout]], stage_devices: int,
                visible: Collection[int]) -> list[int]:
    """Visible source files beyond `metas` worth indexing because a needed file may be de-duplicated:
    every file of the stage of a needed file that lacks a parameter its stage's strategy lays out.

    A file saved without optimizer states lacks those too; its stage's other files are then indexed for
    nothing but their headers."""
    stages = set()
    judged: set[tuple[int, int]] = set()  # (list, stage) pairs already looked at: replicas share lists
    for g in needed:
        ms, stage = metas.get(g), g // stage_devices
        if ms is None or stage in stages or (id(ms), stage) in judged:
            continue
        judged.add((id(ms), stage))
        held = {t.name for t in ms}
        if any(n not in held for n in stage_layouts.get(stage, {})):
            stages.add(stage)
    return sorted(g for g in visible if g // stage_devices in stages and g not in metas)


@lru_cache(maxsize=256)
def replica_groups(layout: ParamLayout, shard_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per local rank of a stage, the index of the slice of the parameter it holds: ranks with equal
    numbers are replicas (computed once per layout class, not per rank and name)."""
    flat = flatten_layout(layout, origin_shape(shard_shape, layout))
    boxes: dict[tuple, int] = {}
    return tuple(boxes.setdefault(device_box(flat, r), len(boxes)) for r in range(flat.device_num))
