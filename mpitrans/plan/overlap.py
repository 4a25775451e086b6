"""Which source shards overlap a target box, found dimension by dimension rather than rank by rank.

A source rank's box depends only on its coordinates along the device axes that the flat layout maps to
tensor dimensions; the other axes (data-parallel replicas) only say who else holds the same bytes. So
the shards overlapping a target box can be found per original dimension: along one dimension, the start
of a rank's interval is a weighted sum of its coordinates on that dimension's axes (row-major
sub-dimensions, see `layout.device_box`), which a pruned walk over those coordinates searches in time
proportional to what overlaps. The replicas are then listed only for the overlapping shards.

The result is exactly what enumerating `device_box` for every rank gives (`brute_force_shards`, kept as
the reference and as the fallback for layouts outside the search's assumptions): the same shards, in the
order of their lowest rank, each with its ranks in ascending order. That order decides which file is read
first, so it is part of MindSpore-exact output.
"""

from __future__ import annotations

from itertools import product

from mpitrans.plan.layout import Box, FlatLayout, device_box, intersect

Shard = tuple[Box, Box, list[int]]  # (the shard's box, its intersection with the target, ranks holding it)
# One dimension's overlapping intervals: (rank offset of the coordinates, interval, interval within target).
_Hit = tuple[int, tuple[int, int], tuple[int, int]]


def brute_force_shards(flat: FlatLayout, target: Box) -> list[Shard]:
    """Every rank's box, grouped by box (first appearance first), kept where it meets `target`."""
    groups: dict[Box, list[int]] = {}
    for r in range(flat.device_num):
        groups.setdefault(device_box(flat, r), []).append(r)
    out = []
    for box, members in groups.items():
        common = intersect(box, target)
        if common is not None:
            out.append((box, common, members))
    return out


def _strides(dev_matrix: tuple[int, ...]) -> list[int]:
    out = [1] * len(dev_matrix)
    for i in range(len(dev_matrix) - 2, -1, -1):
        out[i] = out[i + 1] * dev_matrix[i + 1]
    return out


def _sub_dims(flat: FlatLayout) -> list[list[tuple[int, int, int]]] | None:
    """Per original dimension, its split sub-dimensions as (parts, weight, device-matrix position): the
    weight is how far one step along the axis moves the interval's start. None when a device axis splits
    two sub-dimensions (the search assumes one axis, one sub-dimension)."""
    dev, nd = flat.dev_matrix, len(flat.dev_matrix)
    used: set[int] = set()
    out: list[list[tuple[int, int, int]]] = []
    pos = 0
    for g in flat.groups:
        sizes, axes = flat.shape[pos:pos + g], flat.tensor_map[pos:pos + g]
        subs = []
        for j, (size, axis) in enumerate(zip(sizes, axes, strict=True)):
            if axis == -1 or dev[nd - 1 - axis] == 1:
                continue
            p = nd - 1 - axis
            if p in used or p < 0:
                return None
            used.add(p)
            inner = 1
            for s in sizes[j + 1:]:
                inner *= s
            subs.append((dev[p], size // dev[p] * inner, p))
        out.append(subs)
        pos += g
    return out


def _dimension_hits(subs: list[tuple[int, int, int]], strides: list[int], length: int,
                    target: tuple[int, int]) -> list[_Hit]:
    """The coordinates along one dimension's axes whose interval (`length` long) meets `target`."""
    lo, hi = target
    reach = [0] * (len(subs) + 1)  # how far the deeper axes can still move the start
    for j in range(len(subs) - 1, -1, -1):
        parts, weight, _ = subs[j]
        reach[j] = reach[j + 1] + (parts - 1) * weight
    out: list[_Hit] = []

    def walk(j: int, start: int, offset: int) -> None:
        if j == len(subs):
            end = start + length
            if start < hi and end > lo:
                out.append((offset, (start, end), (max(start, lo), min(end, hi))))
            return
        parts, weight, p = subs[j]
        first = max(0, (lo - length - reach[j + 1] - start) // weight + 1)
        last = min(parts - 1, (hi - start - 1) // weight)
        for c in range(first, last + 1):
            walk(j + 1, start + c * weight, offset + c * strides[p])

    walk(0, 0, 0)
    return out


def _replica_offsets(dev_matrix: tuple[int, ...], mapped: set[int], strides: list[int]) -> list[int]:
    """Rank offsets along the axes that split nothing, ascending (row-major, outermost axis slowest)."""
    offsets = [0]
    for p, size in enumerate(dev_matrix):
        if p not in mapped and size > 1:
            offsets = [o + c * strides[p] for o in offsets for c in range(size)]
    return offsets


def overlapping_shards(flat: FlatLayout, target: Box) -> list[Shard]:
    """The source shards meeting `target`, as `brute_force_shards` lists them, without visiting every rank."""
    subs = _sub_dims(flat)
    if subs is None:
        return brute_force_shards(flat, target)
    # Rank 0's box raises whatever device_box raises for any rank (the checks do not depend on the
    # coordinates) and gives each dimension's interval length.
    first = device_box(flat, 0)
    strides = _strides(flat.dev_matrix)
    hits = [_dimension_hits(s, strides, b - a, t) for s, (a, b), t in zip(subs, first, target, strict=True)]
    mapped = {p for s in subs for _, _, p in s}
    offsets = _replica_offsets(flat.dev_matrix, mapped, strides)
    shards = []
    for combo in product(*hits):
        base = sum(h[0] for h in combo)
        shards.append((base, tuple(h[1] for h in combo), tuple(h[2] for h in combo)))
    shards.sort(key=lambda s: s[0])
    return [(box, common, [base + o for o in offsets]) for base, box, common in shards]
