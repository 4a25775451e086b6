"""Layout algebra: which box of a full tensor each device rank holds.

MindSpore describes a parameter's split by a device matrix, a tensor map and optional optimizer sharding.
Its checkpoint transformer first rewrites optimizer sharding and multi-axis tensor maps into a *flat*
layout over a reshaped ("expanded") tensor, where every expanded dimension is split by at most one
device axis. We reproduce that rewrite rule for rule, because the rewrite decides which rank holds which
bytes (for some device-matrix orders it does not match a naive reading of the strategy), and MindSpore's
output is the reference. Every expanded dimension belongs to one original dimension; a rank's region is
a product of intervals in expanded space, which we fold back into one interval per original dimension.

Everything here is pure arithmetic on small tuples: no I/O, no MPI, no numpy arrays of data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import prod

from mpitrans.errors import LayoutError
from mpitrans.strategy.model import ParamLayout, TensorMapEntry

Box = tuple[tuple[int, int], ...]


def _axis_size(dev_matrix: Sequence[int], axis: int) -> int:
    """Tensor-map entries count device axes from the right (0 is the fastest-varying axis)."""
    return dev_matrix[len(dev_matrix) - 1 - axis]


def is_multi_axis(tensor_map: Sequence[TensorMapEntry]) -> bool:
    return any(isinstance(e, (tuple, list)) for e in tensor_map)


def tensor_strategy(dev_matrix: Sequence[int], tensor_map: Sequence[TensorMapEntry]) -> list[int]:
    """Number of slices along each tensor dimension."""
    out = []
    for entry in tensor_map:
        if isinstance(entry, (tuple, list)):
            out.append(prod(_axis_size(dev_matrix, a) for a in entry if a != -1))
        else:
            out.append(1 if entry == -1 else _axis_size(dev_matrix, entry))
    return out


def resolved_opt_shard_size(layout: ParamLayout) -> int:
    """`-1` means "shard over every replica"; MindSpore resolves it against the model-parallel size."""
    if layout.opt_shard_size == -1:
        return prod(layout.dev_matrix) // prod(tensor_strategy(layout.dev_matrix, layout.tensor_map))
    return layout.opt_shard_size


@dataclass(frozen=True)
class FlatLayout:
    """A layout in which each expanded tensor dimension is split by at most one device axis.

    `groups[i]` is how many consecutive expanded dimensions make up original dimension `i`.
    """

    dev_matrix: tuple[int, ...]
    tensor_map: tuple[int, ...]
    shape: tuple[int, ...]
    groups: tuple[int, ...]

    @property
    def device_num(self) -> int:
        return prod(self.dev_matrix)


def _repeated_axes(dev_matrix: Sequence[int], flat_map: Sequence[int]) -> list[int]:
    """Device-matrix positions (left to right) that split nothing and have size > 1: the replica axes."""
    used = {len(dev_matrix) - 1 - a for a in flat_map if a != -1}
    return [i for i, v in enumerate(dev_matrix) if i not in used and v > 1]


def _opt_shard_general(dev_matrix, tensor_map, opt_size, shape, strategy, repeated, groups):
    """Optimizer sharding over arbitrary replica axes: carve the shard axes out of the replica axes,
    innermost first, splitting an axis when only part of it is needed, then cut dimension 0 into
    (model-parallel part, one part per shard axis, remainder)."""
    new_dev = list(dev_matrix)
    remap = list(range(len(dev_matrix)))
    shard_axes: list[int] = []
    remaining = opt_size if opt_size != -1 else prod(dev_matrix[i] for i in repeated)
    for pos in reversed(repeated):
        take = dev_matrix[pos]
        if remaining // take == 0:
            if take % remaining:
                raise LayoutError(
                    f"device-matrix axis of size {take} cannot host an optimizer shard of size {remaining}"
                )
            take = remaining
            new_dev[pos] = dev_matrix[pos] // take
            new_dev.insert(pos + 1, take)
            for i in range(len(dev_matrix) - pos - 1, len(dev_matrix)):
                remap[i] += 1
        if remaining % take:
            raise LayoutError(f"optimizer shard size {remaining} is not a multiple of device axis size {take}")
        remaining //= take
        shard_axes.insert(0, pos)
        if remaining == 1:
            break
    if remaining != 1:
        raise LayoutError(
            f"optimizer shard size {opt_size} exceeds the replica devices of device matrix {list(dev_matrix)}"
        )
    new_map = list(tensor_map)
    if len(new_dev) != len(dev_matrix):
        shard_axes = [p + 1 for p in shard_axes]
        for i, entry in enumerate(new_map):
            if isinstance(entry, (tuple, list)):
                new_map[i] = tuple(remap[a] if a >= 0 else a for a in entry)
            elif entry >= 0:
                new_map[i] = remap[entry]
    new_shape = list(shape)
    new_shape[0] = strategy[0]
    rest = shape[0] // strategy[0]
    acc = 1
    for i in range(len(shard_axes) - 1):
        size = new_dev[shard_axes[i]]
        new_shape.insert(i + 1, size)
        acc *= size
    new_shape.insert(len(shard_axes), rest // acc)
    for i, pos in enumerate(shard_axes):
        new_map.insert(i + 1, len(new_dev) - pos - 1)
    new_groups = list(groups)
    new_groups[0] += len(shard_axes)
    return new_dev, new_map, new_shape, new_groups


def _expand_multi_axis(dev_matrix, tensor_map, shape, groups):
    """Give every axis of a multi-axis entry its own expanded dimension (leading axes most significant)."""
    new_map: list[int] = []
    new_shape: list[int] = []
    new_groups: list[int] = []
    # `groups` counts expanded dims per original dim; entries of tensor_map line up with expanded dims.
    g_iter = iter(groups)
    left_in_group = next(g_iter, 0)
    current = 0
    for i, entry in enumerate(tensor_map):
        if isinstance(entry, (tuple, list)):
            acc = 1
            for a in entry[:-1]:
                if a == -1:
                    raise LayoutError("a multi-axis tensor-map entry may use -1 only in last position")
                size = _axis_size(dev_matrix, a)
                new_map.append(a)
                new_shape.append(size)
                acc *= size
            new_map.append(entry[-1])
            new_shape.append(shape[i] // acc)
            current += len(entry)
        else:
            new_map.append(entry)
            new_shape.append(shape[i])
            current += 1
        left_in_group -= 1
        if left_in_group == 0:
            new_groups.append(current)
            current = 0
            left_in_group = next(g_iter, 0)
    return list(dev_matrix), new_map, new_shape, new_groups


def _opt_shard_classic(dev: list[int], tmap: list, shape: list[int], groups: list[int], strategy: list[int],
                       step: int, size: int) -> tuple[list[int], list, list[int], list[int]]:
    """Optimizer sharding of a classic (one axis per dimension) layout, checked as MindSpore checks it."""
    repeated = _repeated_axes(dev, tmap)
    if not repeated:
        raise LayoutError(f"device matrix {dev} with tensor map {tmap} has no axis to shard the optimizer")
    if len(repeated) == 1 and prod(dev[repeated[0] + 1:]) != step:
        raise LayoutError(
            f"optimizer shard step {step} differs from the model-parallel size {prod(dev[repeated[0] + 1:])}"
        )
    replicas = prod(dev) // prod(strategy)
    if size > replicas or replicas % size:
        raise LayoutError(f"optimizer shard size {size} does not divide the {replicas} replicas of device matrix {dev}")
    if (1 < len(repeated) < len(dev)) or repeated[0] > 0:
        return _opt_shard_general(dev, tmap, size, shape, strategy, repeated, groups)
    # Only the outermost device axis replicates: MindSpore rebuilds the device matrix from the
    # per-dimension split counts, outermost (replica) first, then the optimizer shard.
    new_shape = list(shape)
    new_shape[0] = strategy[0]
    new_shape.insert(1, shape[0] // strategy[0])
    new_map = [-1 if v == 1 else len(strategy) - 1 - i for i, v in enumerate(strategy)]
    new_map.insert(1, len(strategy))
    new_dev = [size, *strategy]
    repeat = prod(dev) // (step * size)
    if repeat > 1:
        new_dev.insert(0, repeat)
    groups = list(groups)
    groups[0] += 1
    return new_dev, new_map, new_shape, groups


def flatten_layout(layout: ParamLayout | None, full_shape: Sequence[int]) -> FlatLayout:
    """Rewrite a parameter layout (or None: unsplit, one device) into MindSpore's flat form."""
    shape = [int(s) for s in full_shape]
    groups = [1] * len(shape)
    if layout is None:
        return FlatLayout((1,), tuple([-1] * len(shape)), tuple(shape), tuple(groups))
    dev = [int(d) for d in layout.dev_matrix]
    tmap: list[TensorMapEntry] = [tuple(e) if isinstance(e, (tuple, list)) else int(e) for e in layout.tensor_map]
    if len(tmap) != len(shape):
        raise LayoutError(f"tensor map {list(layout.tensor_map)} does not match tensor shape {shape}")
    step, size = layout.opt_shard_step, resolved_opt_shard_size(layout)
    strategy = tensor_strategy(dev, tmap)
    multi = is_multi_axis(tmap)
    sharded = not (step == 0 or size == 0) and len(shape) > 0
    if sharded:
        if shape[0] % strategy[0]:
            raise LayoutError(f"dimension 0 of shape {shape} is not divisible by its split {strategy[0]}")
        if multi:
            _, flat_for_check, _, _ = _expand_multi_axis(dev, tmap, shape, groups)
            repeated = _repeated_axes(dev, flat_for_check)
            if not repeated:
                raise LayoutError(f"device matrix {dev} with tensor map {tmap} has no axis to shard the optimizer")
            dev, tmap, shape, groups = _opt_shard_general(dev, tmap, size, shape, strategy, repeated, groups)
        else:
            dev, tmap, shape, groups = _opt_shard_classic(dev, tmap, shape, groups, strategy, step, size)
    if multi:
        dev, tmap, shape, groups = _expand_multi_axis(dev, tmap, shape, groups)
    if any(s < 1 for s in shape) or prod(shape) != prod(full_shape):
        raise LayoutError(f"layout {layout} cannot be applied to a tensor of shape {list(full_shape)}")
    for size, axis in zip(shape, tmap, strict=True):
        if axis != -1 and size % _axis_size(dev, axis):
            split = tensor_strategy(layout.dev_matrix, layout.tensor_map)
            raise LayoutError(
                f"shape {list(full_shape)} is not divisible by its split {split}"
                f" (device matrix {list(layout.dev_matrix)}, tensor map {list(layout.tensor_map)})"
            )
    return FlatLayout(tuple(dev), tuple(int(e) for e in tmap), tuple(shape), tuple(groups))


def box_holders(flat: FlatLayout, rank: int, devices: int) -> tuple[int, ...]:
    """The ranks in [0, devices) that hold the same box as `rank` (itself included), lowest first: those
    agreeing with it on every device axis the tensor map uses, repeated every `device_num` ranks."""
    dev = flat.dev_matrix
    n = flat.device_num
    if devices % n:
        return tuple(r for r in range(devices) if device_box(flat, r) == device_box(flat, rank))
    used = {len(dev) - 1 - axis for axis in flat.tensor_map if axis != -1}
    coord = rank_coordinate(rank % n, dev)
    ranks = [0]
    for i, size in enumerate(dev):
        values = (coord[i],) if i in used else range(size)
        ranks = [r * size + v for r in ranks for v in values]
    return tuple(sorted(r + k * n for k in range(devices // n) for r in ranks))


def rank_coordinate(rank: int, dev_matrix: Sequence[int]) -> list[int]:
    """Row-major coordinate of a rank in the device matrix (last axis fastest)."""
    coord = [0] * len(dev_matrix)
    for i in range(len(dev_matrix) - 1, -1, -1):
        coord[i] = rank % dev_matrix[i]
        rank //= dev_matrix[i]
    return coord


def _fold_group(sizes: Sequence[int], ranges: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """Fold a box over row-major sub-dimensions back into one interval of the original dimension."""
    p = 0
    while p < len(sizes) - 1 and ranges[p][1] - ranges[p][0] == 1:
        p += 1
    for q in range(p + 1, len(sizes)):
        if ranges[q] != (0, sizes[q]):
            raise LayoutError(f"a shard of sub-shape {list(sizes)} is not contiguous in the full tensor")
    inner = prod(sizes[p + 1:])
    start = 0
    for q in range(p + 1):
        start = start * sizes[q] + ranges[q][0]
    start *= inner
    return start, start + (ranges[p][1] - ranges[p][0]) * inner


def device_box(flat: FlatLayout, rank: int) -> Box:
    """The box of the full (original-shape) tensor held by `rank` under a flat layout."""
    coord = rank_coordinate(rank % flat.device_num, flat.dev_matrix)
    ranges = []
    for size, axis in zip(flat.shape, flat.tensor_map, strict=True):
        if axis == -1:
            ranges.append((0, size))
            continue
        n = _axis_size(flat.dev_matrix, axis)
        if size % n:
            raise LayoutError(f"a dimension of size {size} cannot be split into {n} equal shards")
        step = size // n
        c = coord[len(flat.dev_matrix) - 1 - axis]
        ranges.append((c * step, (c + 1) * step))
    out = []
    pos = 0
    for g in flat.groups:
        out.append(_fold_group(flat.shape[pos:pos + g], ranges[pos:pos + g]))
        pos += g
    return tuple(out)


def box_shape(box: Box) -> tuple[int, ...]:
    return tuple(b - a for a, b in box)


def intersect(a: Box, b: Box) -> Box | None:
    out = []
    for (a0, a1), (b0, b1) in zip(a, b, strict=True):
        lo, hi = max(a0, b0), min(a1, b1)
        if lo >= hi:
            return None
        out.append((lo, hi))
    return tuple(out)


def relative(box: Box, origin: Box) -> Box:
    """Express `box` in the coordinates of the shard `origin` (both in full-tensor coordinates)."""
    return tuple((a - o, b - o) for (a, b), (o, _) in zip(box, origin, strict=True))


def origin_shape(local_shape: Sequence[int], layout: ParamLayout | None) -> tuple[int, ...]:
    """Full tensor shape from one source shard's shape, the way MindSpore infers it."""
    if layout is None:
        return tuple(local_shape)
    strategy = tensor_strategy(layout.dev_matrix, layout.tensor_map)
    size = resolved_opt_shard_size(layout)
    out = []
    for i, s in enumerate(local_shape):
        mult = strategy[i] if i < len(strategy) else 1
        if i == 0 and size > 0:
            mult *= size
        out.append(s * mult)
    return tuple(out)
