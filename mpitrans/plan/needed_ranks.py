"""Which source ranks MindSpore reads to build one target rank: the set `rank_list_for_transform` reports.

Geometrically a target slice needs only the source shards it overlaps, one replica each. MindSpore's
transformer asks for more: it replays its graph-mode redistribution (split, permute, concat over device
axes) and reads every rank of each all-gather group it would form. Its rule, restated:

1. Bring both layouts to the same device count by prefixing a replica axis to the smaller one.
2. Refine both device matrices to their common factorization, and every tensor dimension to common
   sub-dimensions ("atoms"), each split by at most one refined device axis.
3. A refined source axis is *gathered* when the source splits some atom by it and the target does not
   split that same atom by that same axis.
4. The target rank needs every device that agrees with it on all axes that are not gathered, reduced
   modulo the source device count.

mpitrans itself reads far less (see the planner); this module exists so `rank_list_for_transform`
returns exactly MindSpore's list, and so outputs that depend on which files MindSpore happened to load
(parameter order, copies of parameters absent from the strategy) come out identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod

from mpitrans.errors import LayoutError, StrategyError
from mpitrans.plan.layout import FlatLayout, flatten_layout, rank_coordinate, resolved_opt_shard_size, tensor_strategy
from mpitrans.strategy.model import ParamLayout


def _suffix_cuts(sizes: Sequence[int]) -> list[int]:
    """Row-major boundaries of a factorization, as products of the trailing factors."""
    cuts = [1]
    for s in reversed(sizes):
        cuts.append(cuts[-1] * s)
    return cuts


def _refine(cuts_a: Sequence[int], cuts_b: Sequence[int], what: str) -> list[int]:
    cuts = sorted(set(cuts_a) | set(cuts_b))
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        if hi % lo:
            raise LayoutError(f"MindSpore cannot align the {what} of the two layouts ({lo} vs {hi})")
    return cuts


class _Axes:
    """Common refinement of two device matrices of equal size, axes numbered by stride (cut value)."""

    def __init__(self, dev_a: Sequence[int], dev_b: Sequence[int]) -> None:
        self.cuts = _refine(_suffix_cuts(dev_a), _suffix_cuts(dev_b), "device matrices")

    def split(self, dev_matrix: Sequence[int], axis: int) -> list[tuple[int, int]]:
        """(size, stride) of the refined axes making up `axis` (counted from the right), slowest first."""
        lo = prod(dev_matrix[len(dev_matrix) - axis:]) if axis else 1
        hi = lo * dev_matrix[len(dev_matrix) - 1 - axis]
        if hi == lo:
            return []
        inner = [c for c in self.cuts if lo <= c < hi]
        return [(nxt // c, c) for c, nxt in zip(reversed(inner), reversed([*inner[1:], hi]), strict=True)]


def _atoms(flat: FlatLayout, dev: Sequence[int], axes: _Axes) -> list[list[tuple[int, int]]]:
    """Per original dimension: (size, axis stride or 0 for unsplit) atoms, most significant first."""
    out: list[list[tuple[int, int]]] = []
    pos = 0
    for g in flat.groups:
        atoms: list[tuple[int, int]] = []
        for size, axis in zip(flat.shape[pos:pos + g], flat.tensor_map[pos:pos + g], strict=True):
            if axis == -1:
                atoms.append((size, 0))
                continue
            parts = axes.split(dev, axis)
            n = prod(p for p, _ in parts)
            atoms.extend(parts)
            atoms.append((size // n, 0))
        out.append([a for a in atoms if a[0] > 1])
        pos += g
    return out


def _axis_at(atoms: Sequence[tuple[int, int]], cuts: Sequence[int]) -> dict[int, int]:
    """Map each refined position (its cut) to the axis stride splitting it (0: unsplit)."""
    out: dict[int, int] = {}
    hi = prod(s for s, _ in atoms)
    for size, stride in atoms:
        lo = hi // size
        for c in cuts:
            if lo <= c < hi:
                out[c] = stride
        hi = lo
    return out


def _unified(src: FlatLayout, dst: FlatLayout) -> tuple[int, list[int], list[int]]:
    n = max(src.device_num, dst.device_num)
    if n % src.device_num or n % dst.device_num:
        raise LayoutError(f"MindSpore cannot transform between {src.device_num} and {dst.device_num} devices")
    dev_src = [n // src.device_num, *src.dev_matrix] if n > src.device_num else list(src.dev_matrix)
    dev_dst = [n // dst.device_num, *dst.dev_matrix] if n > dst.device_num else list(dst.dev_matrix)
    return n, dev_src, dev_dst


def gathered_axes(src: FlatLayout, dst: FlatLayout) -> tuple[list[int], set[int]]:
    """The axes of the device space (as cuts) and the strides MindSpore all-gathers over."""
    _, dev_src, dev_dst = _unified(src, dst)
    try:
        axes = _Axes(dev_src, dev_dst)
        gathered: set[int] = set()
        for a_src, a_dst in zip(_atoms(src, dev_src, axes), _atoms(dst, dev_dst, axes), strict=True):
            cuts = _refine(_suffix_cuts([s for s, _ in a_src]), _suffix_cuts([s for s, _ in a_dst]),
                           "tensor shapes")
            at_src, at_dst = _axis_at(a_src, cuts), _axis_at(a_dst, cuts)
            for c, stride in at_src.items():
                if stride and at_dst.get(c, 0) != stride:
                    gathered.add(stride)
        return axes.cuts, gathered
    except LayoutError:
        return _coarse_gathered_axes(src, dst, dev_src, dev_dst)


def _coarse_gathered_axes(src, dst, dev_src, dev_dst) -> tuple[list[int], set[int]]:
    """When the two layouts have no common refinement (e.g. device matrices (2, 3) and (3, 2)),
    MindSpore's all-gathers cover whole source axes: along each tensor dimension, source axes are kept
    while both sides split it identically (same axis size and stride), and gathered from the first
    difference on."""
    def atoms(flat: FlatLayout, dev: list[int]) -> list[list[tuple[int, int]]]:
        strides = _suffix_cuts(dev)  # strides[a]: stride of the axis `a` positions from the right
        out, pos = [], 0
        for g in flat.groups:
            dim: list[tuple[int, int]] = []
            for axis in flat.tensor_map[pos:pos + g]:
                if axis != -1 and dev[len(dev) - 1 - axis] > 1:
                    dim.append((dev[len(dev) - 1 - axis], strides[axis]))
            out.append(dim)
            pos += g
        return out

    gathered: set[int] = set()
    for a_src, a_dst in zip(atoms(src, dev_src), atoms(dst, dev_dst), strict=True):
        same = 0
        while same < min(len(a_src), len(a_dst)) and a_src[same] == a_dst[same]:
            same += 1
        gathered.update(stride for _, stride in a_src[same:])
    return _suffix_cuts(dev_src), gathered


def needed_source_ranks(local_rank: int, src: FlatLayout, dst: FlatLayout) -> set[int]:
    """Source ranks (within one stage) MindSpore loads to build `local_rank` of the target stage."""
    cuts, gathered = gathered_axes(src, dst)
    n = cuts[-1]
    sizes = [hi // lo for lo, hi in zip(cuts, cuts[1:], strict=False)][::-1]
    strides = list(reversed(cuts[:-1]))
    me = rank_coordinate(local_rank, sizes) if sizes else []
    choices: list[list[int]] = []
    for i, (size, stride) in enumerate(zip(sizes, strides, strict=True)):
        choices.append([c * stride for c in range(size)] if stride in gathered else [me[i] * stride])
    ranks = {0}
    for options in choices:
        ranks = {r + o for r in ranks for o in options}
    return {r % src.device_num for r in ranks if r < n}


def device_count(lmap: Mapping[str, ParamLayout] | None) -> int:
    """Devices per pipeline stage of a layout map (its first parameter's device matrix); 1 without one."""
    if not lmap:
        return 1
    first = next(iter(lmap.values()))
    if not first.dev_matrix:
        raise StrategyError("a strategy holding only pipeline parallelism (empty device matrix) is not supported")
    return prod(first.dev_matrix)


@dataclass(frozen=True)
class RankListBasis:
    """What MindSpore's rank list depends on besides the target rank, worked out once per pair of layout
    maps: a planner asks for every target's list, and re-deriving this for each costs a walk over every
    parameter where a few distinct layout pairs matter."""

    src_devices: int
    dst_devices: int
    stages: tuple[int, ...]  # source pipeline stages, in MindSpore's order
    # (parameter, source flat, target flat) on MindSpore's made-up probe shape, one per distinct layout pair
    probes: tuple[tuple[str, FlatLayout, FlatLayout], ...]
    error: str | None = None  # the next pair's layout error, raised once the probes before it are used


def _probe_shape(layout: ParamLayout, to: ParamLayout | None) -> list[int]:
    """Like MindSpore, a made-up shape that every split divides: membership depends only on axes."""
    n_from = prod(layout.dev_matrix)
    n_to = prod(to.dev_matrix) if to is not None else 1
    probe = [max(n_from, n_to)] * len(layout.tensor_map)
    split = tensor_strategy(layout.dev_matrix, layout.tensor_map)
    opt = resolved_opt_shard_size(layout)
    return [p * split[i] * (opt if i == 0 and opt > 0 else 1) for i, p in enumerate(probe)]


def rank_list_basis(src_map: Mapping[str, ParamLayout], dst_map: Mapping[str, ParamLayout] | None,
                    source: str = "") -> RankListBasis:
    """The rank-independent part of `rank_list_for_transform` for these (rank-cut) layout maps."""
    if not src_map:
        raise StrategyError(f"the source strategy {source or ''} is empty".replace("  ", " "))
    src_devices = device_count(src_map)
    dst_devices = device_count(dst_map) if dst_map is not None else 1
    probes: list[tuple[str, FlatLayout, FlatLayout]] = []
    error = None
    handled = set()
    for name, layout in src_map.items():
        if dst_map is not None and name not in dst_map:
            continue
        to = dst_map.get(name) if dst_map is not None else None
        key = (layout.dev_matrix, layout.tensor_map, layout.opt_shard_step, layout.opt_shard_size,
               None if to is None else (to.dev_matrix, to.tensor_map, to.opt_shard_step, to.opt_shard_size))
        if key in handled:
            continue
        handled.add(key)
        try:
            shape = _probe_shape(layout, to)
            probes.append((name, flatten_layout(layout, shape), flatten_layout(to, shape)))
        except LayoutError as exc:
            error = f"parameter {name!r}: {exc}"
            break
    stages: list[int] = []
    for layout in src_map.values():
        for s in layout.stages:
            if s not in stages:
                stages.append(s)
    return RankListBasis(src_devices, dst_devices, tuple(stages), tuple(probes), error)


def rank_list_from(rank: int, basis: RankListBasis) -> list[int]:
    """MindSpore's rank list for target `rank` (global), highest rank first."""
    local = rank % basis.dst_devices if basis.dst_devices > 1 else rank
    needed_local: set[int] = set()
    for name, src_flat, dst_flat in basis.probes:
        try:
            needed_local |= needed_source_ranks(local, src_flat, dst_flat)
        except LayoutError as exc:
            raise LayoutError(f"parameter {name!r}: {exc}") from None
    if basis.error is not None:
        raise LayoutError(basis.error)
    out = {s * basis.src_devices + r for s in basis.stages for r in needed_local}
    return sorted(out, reverse=True)
