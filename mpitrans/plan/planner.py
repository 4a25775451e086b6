"""The resharding plan: for every target rank, which tensors it holds and where each byte comes from.

The planner is a pure function of the strategies and the source files' metadata (names, dtypes, shapes,
in file order). It follows MindSpore's `transform_checkpoints` decisions wherever they change the output:
which parameters a target keeps, their order in the file, which source rank a parameter absent from
the strategy is copied from, and the `_part` naming of a single-stage source. Where MindSpore has a free
choice that does not change bytes (which data-parallel replica to read), the plan keeps every candidate
so the engine can pick the cheapest reader.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from math import prod

from mpitrans.errors import LayoutError, MissingShardError, StrategyError
from mpitrans.metadata import TensorMeta
from mpitrans.plan.filters import KEEP_ALL, ParamFilter
from mpitrans.plan.layout import (
    Box,
    box_shape,
    device_box,
    flatten_layout,
    intersect,
    origin_shape,
    relative,
    resolved_opt_shard_size,
    tensor_strategy,
)
from mpitrans.plan.needed_ranks import needed_source_ranks
from mpitrans.storage.discover import rank_span
from mpitrans.strategy.layout_map import layout_map, pipeline_stage_num, src_dst_layout_maps
from mpitrans.strategy.model import ParamLayout, StrategyFile

# MindSpore skips these optimizer-state prefixes when deciding whether a source strategy covers only one
# pipeline stage of the target model.
_OPTIMIZER_PREFIXES = ("accu_grads", "adam_v", "adam_m")


@dataclass(frozen=True)
class Region:
    """A box of a target tensor that equals a box of any one of several identical source shards."""

    dst_box: Box  # relative to the target tensor
    src_box: Box  # relative to each candidate's shard (the same for all candidates)
    candidates: tuple[int, ...]  # global source ranks holding identical bytes, preferred first


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    regions: tuple[Region, ...]


@dataclass
class TargetPlan:
    rank: int  # global target rank (the `rank_x` directory)
    stem: str  # file name inside rank_x/ without the format's suffix (`checkpoint_3`, `checkpoint_3_part0`)
    tensors: list[OutTensor] = field(default_factory=list)


def _local_src_groups(flat, nranks: int, target_box: Box) -> list[tuple[Box, Box, list[int]]]:
    """Group source local ranks by the box they hold; keep groups overlapping the target box."""
    groups: dict[Box, list[int]] = {}
    for r in range(nranks):
        groups.setdefault(device_box(flat, r), []).append(r)
    out = []
    for box, members in groups.items():
        common = intersect(box, target_box)
        if common is not None:
            out.append((box, common, members))
    return out


def _stage_layouts(strategy: StrategyFile) -> dict[tuple[int, str], tuple]:
    """(stage, parameter) -> a comparable form of that stage's own layout of it."""
    out: dict[tuple[int, str], tuple] = {}
    for full_name, raw in strategy.layouts:
        stage, _, name = full_name.rpartition("-")
        try:
            st = int(stage) if stage else 0
        except ValueError:
            continue
        out.setdefault((st, name), (raw.dev_matrix, raw.tensor_map, raw.opt_weight_shard_step,
                                    raw.opt_weight_shard_size))
    return out


def _device_count(lmap: Mapping[str, ParamLayout] | None) -> int:
    if not lmap:
        return 1
    first = next(iter(lmap.values()))
    if not first.dev_matrix:
        raise StrategyError("a strategy holding only pipeline parallelism (empty device matrix) is not supported")
    return prod(first.dev_matrix)


def _filtered(metas: Mapping[int, Sequence[TensorMeta]], keep: ParamFilter) -> dict[int, list[TensorMeta]]:
    """The source parameter lists without what the filters drop: nothing of them is planned, read or sent."""
    if not keep.active:
        return {r: list(m) for r, m in metas.items()}
    kept = set(keep.apply(dict.fromkeys(t.name for m in metas.values() for t in m)))
    return {r: [t for t in m if t.name in kept] for r, m in metas.items()}


def _not_in_local_stage(name: str, origin: Mapping | None, current: Mapping | None) -> bool:
    if origin is None or current is None:
        return True
    return name in origin and name not in current


class Planner:
    """Builds target plans; construct once per job, then call `plan(rank)` for the ranks you write."""

    def __init__(
        self,
        src: StrategyFile | None,
        dst: StrategyFile | None,
        metas: Mapping[int, Sequence[TensorMeta]],
        prefix: str = "checkpoint_",
        param_filter: ParamFilter = KEEP_ALL,
    ) -> None:
        self.src, self.dst, self.prefix = src, dst, prefix
        self.param_filter = param_filter
        self.metas = _filtered(metas, param_filter)
        self._by_name = {r: {t.name: t for t in m} for r, m in self.metas.items()}
        self.origin_src = layout_map(src) if src is not None else None
        self.origin_dst = layout_map(dst) if dst is not None else None
        self.src_stage_devices = _device_count(self.origin_src)
        self.dst_stage_devices = _device_count(self.origin_dst)
        self.src_stages = pipeline_stage_num(src) if src is not None else 1
        self.dst_stages = pipeline_stage_num(dst) if dst is not None else 1
        self.by_stage = self._is_single_stage_source()
        self._stage_layout = _stage_layouts(src) if src is not None else {}

    # -- which targets exist -------------------------------------------------------------------------

    def _is_single_stage_source(self) -> bool:
        """MindSpore's rule for a source strategy that covers one pipeline stage of the target model."""
        if not (self.origin_src and self.origin_dst) or self.src_stages != 1 or self.dst_stages != 1:
            return False
        src_keys = {k for k in self.origin_src if not k.startswith(_OPTIMIZER_PREFIXES)}
        dst_keys = {k for k in self.origin_dst if not k.startswith(_OPTIMIZER_PREFIXES)}
        return src_keys < dst_keys

    def target_ranks(self) -> list[int]:
        if self.by_stage:
            return list(range(self.dst_stage_devices))
        return list(range(self.dst_stage_devices * self.dst_stages))

    def stem(self, rank: int) -> str:
        if self.by_stage:
            return f"{self.prefix}{rank}_part{self.src.stage}"
        return f"{self.prefix}{rank}"

    # -- MindSpore's needed-rank list --------------------------------------------------------------

    def rank_list(self, rank: int) -> list[int]:
        """MindSpore's `rank_list_for_transform(rank, src, dst)`; where MindSpore cannot transform at all
        (device counts that do not divide each other, e.g. 3 -> 2), every source rank, highest first:
        mpitrans reshards those exactly, as MindSpore would through a full checkpoint."""
        try:
            return rank_list_for_strategies(rank, self.src, self.dst)
        except LayoutError:
            # Real shapes are checked when the tensors are planned; here only the list is unavailable.
            n = self.src_stage_devices * self.src_stages
            return list(range(n - 1, -1, -1))

    # -- plan ----------------------------------------------------------------------------------------

    def plan(self, rank: int, load_order: Sequence[int] | None = None) -> TargetPlan:
        """Plan one target. `load_order` replaces MindSpore's file loading order (highest needed rank
        first) where the caller chose the files, as `transform_checkpoint_by_rank` does."""
        if self.by_stage and load_order is None:
            return self._plan_by_stage(rank)
        return self._plan_all_stages(rank, load_order)

    def _plan_all_stages(self, rank: int, load_order: Sequence[int] | None) -> TargetPlan:
        if load_order is not None:
            needed = list(load_order)
        else:
            needed = self.rank_list(rank) if self.src is not None else [0]
            if not any(g in self.metas for g in needed):
                # Nothing to take parameter names, order and shapes from: say which files are absent
                # rather than that no parameter matches the strategies.
                raise MissingShardError(f"none of the source checkpoints it is built from ({rank_span(needed)}) "
                                        f"was found")
        src_map, dst_map = src_dst_layout_maps(rank, self.src, self.dst)
        # Parameter order and which file supplies each (name, local rank): MindSpore loads the needed
        # files from the highest rank down, so the first appearance fixes the order and the lowest rank
        # holding a name wins.
        order: list[str] = []
        seen: set[str] = set()
        first_shape: dict[str, tuple[int, ...]] = {}
        chosen: dict[tuple[str, int], int] = {}
        first_local: dict[str, int] = {}
        for g in needed:
            for meta in self.metas.get(g, ()):
                if meta.name not in seen:
                    seen.add(meta.name)
                    order.append(meta.name)
                    first_local[meta.name] = g % self.src_stage_devices
                chosen[(meta.name, g % self.src_stage_devices)] = g
        # MindSpore infers the full shape from the shard stored under the first local rank it saw, whose
        # value the lowest rank loaded later overwrote: take the shape from that file.
        for name, loc in first_local.items():
            first_shape[name] = self._by_name[chosen[(name, loc)]][name].shape
        order = [
            n for n in order
            if not (_not_in_local_stage(n, self.origin_src, src_map)
                    and _not_in_local_stage(n, self.origin_dst, dst_map))
        ]
        local = rank % self.dst_stage_devices
        return self._build(rank, local, order, first_shape, chosen, src_map, dst_map)

    def _plan_by_stage(self, rank: int) -> TargetPlan:
        """One stage's source strategy against the whole target model: MindSpore loads that stage's files
        in rank order (so the highest rank wins) and writes `{prefix}{rank}_part{stage}.ckpt`."""
        stage = self.src.stage
        start = stage * self.src_stage_devices
        src_map = dict(self.origin_src)
        dst_map = {k: v for k, v in self.origin_dst.items() if k in src_map}
        order: list[str] = []
        first_shape: dict[str, tuple[int, ...]] = {}
        chosen: dict[tuple[str, int], int] = {}
        for g in range(start, start + self.src_stage_devices):
            for meta in self.metas.get(g, ()):
                if meta.name not in first_shape:
                    order.append(meta.name)
                    first_shape[meta.name] = meta.shape
                chosen[(meta.name, g % self.src_stage_devices)] = g
        return self._build(rank, rank, order, first_shape, chosen, src_map, dst_map)

    def _candidates(self, name: str, local: int, preferred: int | None) -> tuple[int, ...]:
        """Global source ranks whose file holds `name` as local rank `local`, MindSpore's choice first.

        A parameter shared by pipeline stages may be laid out differently in each; only stages whose
        layout equals the preferred file's stage layout hold the same bytes."""
        out = [preferred] if preferred is not None else []
        want = self._stage_layout.get((preferred // self.src_stage_devices, name)) if preferred is not None else None
        for g in sorted(self.metas):
            if g % self.src_stage_devices != local or g == preferred or name not in self._by_name[g]:
                continue
            if want is not None and self._stage_layout.get((g // self.src_stage_devices, name)) != want:
                continue
            out.append(g)
        return tuple(out)

    def _build(self, rank, local, order, first_shape, chosen, src_map, dst_map) -> TargetPlan:
        plan = TargetPlan(rank, self.stem(rank))
        deferred: list[str] = []
        device_num = -1
        for name in order:
            if (src_map is not None and name not in src_map) or (dst_map is not None and name not in dst_map):
                deferred.append(name)
                continue
            src_layout = src_map.get(name) if src_map is not None else None
            dst_layout = dst_map.get(name) if dst_map is not None else None
            plan.tensors.append(self._transform(name, local, first_shape[name], src_layout, dst_layout, chosen))
            device_num = prod(src_layout.dev_matrix) if src_layout is not None else 1
        if device_num < 1:
            raise StrategyError(
                "none of the parameters in the source checkpoints appear in the source or destination strategy; "
                "check that the strategy files belong to this model"
            )
        for name in deferred:
            src_local = local % device_num
            g = chosen.get((name, src_local))
            cands = self._candidates(name, src_local, g)
            holders = [r for r in sorted(self._by_name) if name in self._by_name[r]]
            if not cands:
                # MindSpore copies it from source rank `src_local`, whose file nobody indexed: name that
                # file (the engine reports it as missing), taking dtype and shape from another copy.
                cands = (src_local,)
            if not holders:
                raise MissingShardError(f"parameter {name!r} of target rank {rank}: no source checkpoint holds it")
            meta = self._by_name[cands[0] if cands[0] in self._by_name else holders[0]][name]
            full = tuple((0, s) for s in meta.shape)
            plan.tensors.append(OutTensor(name, meta.dtype, meta.shape, (Region(full, full, cands),)))
        return plan

    def _transform(self, name, local, shard_shape, src_layout, dst_layout, chosen) -> OutTensor:
        full_shape = origin_shape(shard_shape, src_layout)
        for side, layout in (("source", src_layout), ("destination", dst_layout)):
            _check_supported(name, side, layout, full_shape)
        try:
            src_flat = flatten_layout(src_layout, full_shape)
            dst_flat = flatten_layout(dst_layout, full_shape)
        except LayoutError as exc:
            raise LayoutError(f"parameter {name!r}: {exc}") from None
        n_src = src_flat.device_num if src_layout is not None else 1
        stages = src_layout.stages if src_layout is not None else (0,)
        target_box = device_box(dst_flat, local)
        regions = []
        dtype = None
        for src_box, common, members in _local_src_groups(src_flat, n_src, target_box):
            cands: list[int] = []
            for m in members:
                for g in self._candidates(name, m, chosen.get((name, m))):
                    if g not in cands:
                        cands.append(g)
            if cands:
                dtype = dtype or self._by_name[cands[0]][name].dtype
            else:
                # Nobody indexed a file holding this shard: name the files that should, so the job can
                # report every missing `rank_x` before moving any byte.
                cands = sorted({s * self.src_stage_devices + m for m in members for s in stages})
            regions.append(Region(relative(common, target_box), relative(common, src_box), tuple(cands)))
        if dtype is None:
            raise MissingShardError(
                f"parameter {name!r}: no source checkpoint holding it was found "
                f"(source ranks {sorted({g for r in regions for g in r.candidates})})"
            )
        return OutTensor(name, dtype, box_shape(target_box), tuple(regions))


def _check_supported(name: str, side: str, layout: ParamLayout | None, full_shape: Sequence[int]) -> None:
    """Refuse layouts whose bytes MindSpore's transformer does not place by the device matrix alone."""
    if layout is None:
        return
    if layout.field > 0:
        raise LayoutError(
            f"parameter {name!r}: the {side} strategy splits it by field (field={layout.field}); "
            f"mpitrans does not reshard field-split embeddings"
        )
    split = [s for s in layout.param_split_shape if s]
    if split:
        parts = tensor_strategy(layout.dev_matrix, layout.tensor_map)[0] if layout.tensor_map else 1
        even = full_shape and len(set(split)) == 1 and split[0] * parts == full_shape[0]
        if not even:
            raise LayoutError(
                f"parameter {name!r}: the {side} strategy splits dimension 0 unevenly "
                f"(param_split_shape={list(layout.param_split_shape)}); mpitrans only reshards even splits"
            )


def rank_list_for_strategies(rank: int, src: StrategyFile | None, dst: StrategyFile | None) -> list[int]:
    """MindSpore's `rank_list_for_transform` on parsed strategies: same members, same (descending) order."""
    if src is None:
        return [0]
    src_map, dst_map = src_dst_layout_maps(rank, src, dst)
    if not src_map:
        raise StrategyError(f"the source strategy {src.source or ''} is empty".replace("  ", " "))
    src_devices = _device_count(src_map)
    dst_devices = _device_count(dst_map) if dst_map is not None else 1
    local = rank % dst_devices if dst_devices > 1 else rank
    needed_local: set[int] = set()
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
        n_from = prod(layout.dev_matrix)
        n_to = prod(to.dev_matrix) if to is not None else 1
        ndim = len(layout.tensor_map)
        # Like MindSpore, use a made-up shape that every split divides: membership depends only on axes.
        probe = [max(n_from, n_to)] * ndim
        split = tensor_strategy(layout.dev_matrix, layout.tensor_map)
        opt = resolved_opt_shard_size(layout)
        shape = [p * split[i] * (opt if i == 0 and opt > 0 else 1) for i, p in enumerate(probe)]
        try:
            src_flat = flatten_layout(layout, shape)
            dst_flat = flatten_layout(to, shape)
            needed_local |= needed_source_ranks(local, src_flat, dst_flat)
        except LayoutError as exc:
            raise LayoutError(f"parameter {name!r}: {exc}") from None
    stages: list[int] = []
    for layout in src_map.values():
        for s in layout.stages:
            if s not in stages:
                stages.append(s)
    out = {s * src_devices + r for s in stages for r in needed_local}
    return sorted(out, reverse=True)
