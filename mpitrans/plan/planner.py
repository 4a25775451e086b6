"""The resharding plan: for every target rank, which tensors it holds and where each byte comes from.

The planner is a pure function of the strategies and the source files' metadata (names, dtypes, shapes,
in file order). It follows MindSpore's `transform_checkpoints` decisions wherever they change the output:
which parameters a target keeps, their order in the file, which source rank a parameter absent from
the strategy is copied from, and the `_part` naming of a single-stage source. Where MindSpore has a free
choice that does not change bytes (which data-parallel replica to read), the plan keeps every candidate
so the engine can pick the cheapest reader.

Planning one target costs what that target holds, not what the cluster holds: the source shards a
target box overlaps are found per dimension (`overlap`), never by visiting every source rank; parameters
with the same shard shape and layouts share one region template, and parameters held by the same files
share their candidates (`catalog`), so an 80-layer model is a few dozen geometry computations; the
layout maps MindSpore cuts per rank, and the rank-independent part of its rank list, are computed once
per target stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import count
from math import prod

from mpitrans.errors import LayoutError, MissingShardError, MpitransError, StrategyError
from mpitrans.metadata import TensorMeta
from mpitrans.plan.catalog import LoadOrder, SourceCatalog, distinct_lists, per_list
from mpitrans.plan.filters import KEEP_ALL, ParamFilter
from mpitrans.plan.layout import (
    Box,
    box_holders,
    box_shape,
    device_box,
    flatten_layout,
    origin_shape,
    relative,
    tensor_strategy,
)
from mpitrans.plan.lora import ROLE_A, ROLE_B, LoraMerge, LoraPair, check_shapes, is_lora
from mpitrans.plan.needed_ranks import RankListBasis, device_count, rank_list_basis, rank_list_from
from mpitrans.plan.overlap import overlapping_shards
from mpitrans.storage.discover import rank_span
from mpitrans.strategy.layout_map import layout_map, pipeline_stage_num, src_dst_layout_maps
from mpitrans.strategy.model import ParamLayout, StrategyFile

# MindSpore skips these optimizer-state prefixes when deciding whether a source strategy covers only one
# pipeline stage of the target model.
_OPTIMIZER_PREFIXES = ("accu_grads", "adam_v", "adam_m")
# How many target local ranks keep their region templates (a process usually plans one or a few).
_TEMPLATE_LOCALS = 8


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
    # LoRA merge (plan/lora.py): "lora_b"/"lora_a" for a factor slice that is delivered but never written,
    # and on the weight that follows them, the scaling its writer merges them with.
    role: str = ""
    lora_scaling: float | None = None
    # Every target rank holding this same box of the tensor (this one included), lowest first; empty where
    # the planner does not know them. The processes writing them want the same regions, so each can work
    # out alone who reads what for all of them (see `job.exchange`).
    holders: tuple[int, ...] = ()

    @property
    def written(self) -> bool:
        """Whether the tensor goes into the target file (auxiliary LoRA slices do not)."""
        return not self.role


@dataclass
class TargetPlan:
    rank: int  # global target rank (the `rank_x` directory)
    stem: str  # file name inside rank_x/ without the format's suffix (`checkpoint_3`, `checkpoint_3_part0`)
    tensors: list[OutTensor] = field(default_factory=list)


@dataclass(frozen=True)
class _Template:
    """The geometry of one class of parameters in one target: same shard shape, same source and target
    layouts, hence the same boxes and the same source shards (an 80-layer model has a few dozen)."""

    key: int
    shape: tuple[int, ...]  # the target tensor's shape
    stages: tuple[int, ...]  # source pipeline stages holding the parameter (to name missing files)
    # (box in the target, box in each holding shard, local source ranks holding it, lowest first)
    pieces: tuple[tuple[Box, Box, tuple[int, ...]], ...]
    holders: tuple[int, ...]  # target local ranks holding the same box (see `OutTensor.holders`), or ()
    box: Box = ()  # the target's box in the full tensor


@dataclass
class _Target:
    """What planning one target needs besides the planner itself."""

    rank: int
    local: int  # rank within its stage (by-stage plans: the rank itself)
    loaded: LoadOrder
    src_map: dict[str, ParamLayout] | None
    dst_map: dict[str, ParamLayout] | None
    # (template key, holder class) -> (regions, file supplying the dtype): names of one class share them
    regions: dict[tuple[int, int], tuple[tuple[Region, ...], int | None]] = field(default_factory=dict)
    _holders: dict[int, tuple[int, ...]] = field(default_factory=dict)  # template key -> global ranks

    def holders(self, tpl: _Template) -> tuple[int, ...]:
        """The template's holders as global target ranks (one shared tuple per template)."""
        found = self._holders.get(tpl.key)
        if found is None:
            offset = self.rank - self.local
            found = self._holders[tpl.key] = tuple(offset + r for r in tpl.holders)
        return found


def _geometry(key: int, name: str, local: int, shard_shape: tuple[int, ...], src_layout: ParamLayout | None,
              dst_layout: ParamLayout | None, targets: int) -> _Template:
    """Compute a template; `name` only labels errors (the first parameter of the class met)."""
    full_shape = origin_shape(shard_shape, src_layout)
    for side, layout in (("source", src_layout), ("destination", dst_layout)):
        _check_supported(name, side, layout, full_shape)
    try:
        src_flat = flatten_layout(src_layout, full_shape)
        dst_flat = flatten_layout(dst_layout, full_shape)
    except LayoutError as exc:
        raise LayoutError(f"parameter {name!r}: {exc}") from None
    target_box = device_box(dst_flat, local)
    pieces = tuple((relative(common, target_box), relative(common, box), tuple(members))
                   for box, common, members in overlapping_shards(src_flat, target_box))
    stages = src_layout.stages if src_layout is not None else (0,)
    # A parameter of several target stages is held in each: its holders are not one stage's ranks.
    one_stage = dst_layout is None or len(dst_layout.stages) <= 1
    holders = box_holders(dst_flat, local, targets) if one_stage else ()
    return _Template(key, box_shape(target_box), stages, pieces, holders, target_box)


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


def _filtered(metas: Mapping[int, Sequence[TensorMeta]], keep: ParamFilter) -> Mapping[int, Sequence[TensorMeta]]:
    """The source parameter lists without what the filters drop: nothing of them is planned, read or sent.
    Files sharing one list share its filtered copy (see `catalog`)."""
    if not keep.active:
        return metas
    names = dict.fromkeys(t.name for m in distinct_lists(metas) for t in m)
    kept = set(keep.apply(names))
    return per_list(metas, lambda m: [t for t in m if t.name in kept])


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
        lora: LoraMerge | None = None,
    ) -> None:
        self.src, self.dst, self.prefix = src, dst, prefix
        self.param_filter = param_filter
        self.origin_src = layout_map(src) if src is not None else None
        self.origin_dst = layout_map(dst) if dst is not None else None
        self.src_stage_devices = device_count(self.origin_src)
        self.dst_stage_devices = device_count(self.origin_dst)
        self.src_stages = pipeline_stage_num(src) if src is not None else 1
        self.dst_stages = pipeline_stage_num(dst) if dst is not None else 1
        self.by_stage = self._is_single_stage_source()
        stage_layout = _stage_layouts(src) if src is not None else {}
        self.catalog = SourceCatalog(_filtered(metas, param_filter), self.src_stage_devices, stage_layout)
        self.metas = self.catalog.metas
        self.lora = lora
        self.lora_pairs: dict[str, LoraPair] = (
            lora.pairs(dict.fromkeys(t.name for m in distinct_lists(self.metas) for t in m)) if lora else {})
        # Region templates by target local rank, then by (shard shape, source layout, target layout); kept
        # for the last few local ranks only, so a process planning many targets stays small.
        self._templates: dict[int, dict[tuple, _Template]] = {}
        self._template_keys = count()
        # Rank-cut layout maps and rank-list bases, by `_rank_key`.
        self._dst_device_counts = sorted({prod(raw.dev_matrix_messages()[0]) for _, raw in dst.layouts
                                          if raw.dev_matrix_messages()}) if dst is not None else []
        self._layout_maps: dict[tuple[int, ...], tuple] = {}
        self._bases: dict[tuple[int, ...], RankListBasis] = {}

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
        if self.src is None:
            return [0]
        key = self._rank_key(rank)
        basis = self._bases.get(key)
        try:
            if basis is None:
                src_map, dst_map = self._maps(rank)
                basis = self._bases[key] = rank_list_basis(src_map, dst_map, self.src.source)
            return rank_list_from(rank, basis)
        except LayoutError:
            # Real shapes are checked when the tensors are planned; here only the list is unavailable.
            n = self.src_stage_devices * self.src_stages
            return list(range(n - 1, -1, -1))

    def _rank_key(self, rank: int) -> tuple[int, ...]:
        """What the destination's rank-cut layout maps depend on: `rank // n` for each device count n of
        its layouts (which stage the rank is in, and whether it is in the first)."""
        return tuple(rank // n if n else 0 for n in self._dst_device_counts)

    def _maps(self, rank: int) -> tuple[dict[str, ParamLayout] | None, dict[str, ParamLayout] | None]:
        """`src_dst_layout_maps(rank, src, dst)`, computed once per destination stage (read-only)."""
        key = self._rank_key(rank)
        maps = self._layout_maps.get(key)
        if maps is None:
            maps = self._layout_maps[key] = src_dst_layout_maps(rank, self.src, self.dst)
        return maps

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
        src_map, dst_map = self._maps(rank)
        # Parameter order and which file supplies each (name, local rank): MindSpore loads the needed
        # files from the highest rank down, so the first appearance fixes the order and the lowest rank
        # holding a name wins.
        loaded = LoadOrder(self.catalog, needed)
        first = loaded.first_seen(needed)
        # MindSpore infers the full shape from the shard stored under the first local rank it saw, whose
        # value the lowest rank loaded later overwrote: take the shape from that file.
        sd = self.src_stage_devices
        first_shape = {n: self.catalog.meta(n, loaded.chosen(n, g % sd)).shape for n, g in first.items()}
        order = [
            n for n in first
            if not (_not_in_local_stage(n, self.origin_src, src_map)
                    and _not_in_local_stage(n, self.origin_dst, dst_map))
        ]
        target = _Target(rank, rank % self.dst_stage_devices, loaded, src_map, dst_map)
        return self._build(target, order, first_shape)

    def _plan_by_stage(self, rank: int) -> TargetPlan:
        """One stage's source strategy against the whole target model: MindSpore loads that stage's files
        in rank order (so the highest rank wins) and writes `{prefix}{rank}_part{stage}.ckpt`."""
        stage = self.src.stage
        start = stage * self.src_stage_devices
        src_map = dict(self.origin_src)
        dst_map = {k: v for k, v in self.origin_dst.items() if k in src_map}
        files = range(start, start + self.src_stage_devices)
        loaded = LoadOrder(self.catalog, files)
        first = loaded.first_seen(files)
        first_shape = {n: self.catalog.meta(n, g).shape for n, g in first.items()}
        target = _Target(rank, rank, loaded, src_map, dst_map)
        return self._build(target, list(first), first_shape)

    def _build(self, target: _Target, order: Sequence[str], first_shape: Mapping[str, tuple[int, ...]]) -> TargetPlan:
        src_map, dst_map = target.src_map, target.dst_map
        plan = TargetPlan(target.rank, self.stem(target.rank))
        deferred: list[str] = []
        device_num = -1
        for name in order:
            if self.lora is not None and is_lora(name):
                continue  # merged into its weight below, or (optimizer state, ...) left out as MindFormers does
            if (src_map is not None and name not in src_map) or (dst_map is not None and name not in dst_map):
                deferred.append(name)
                continue
            src_layout = src_map.get(name) if src_map is not None else None
            dst_layout = dst_map.get(name) if dst_map is not None else None
            out = self._transform(name, first_shape[name], src_layout, dst_layout, target)
            if name in self.lora_pairs:
                box = self._template(name, target.local, first_shape[name], src_layout, dst_layout).box
                plan.tensors.extend(self._lora_slices(self.lora_pairs[name], box, target, first_shape))
                out = replace(out, lora_scaling=self.lora.scaling)
            plan.tensors.append(out)
            device_num = prod(src_layout.dev_matrix) if src_layout is not None else 1
        if device_num < 1:
            raise StrategyError(
                "none of the parameters in the source checkpoints appear in the source or destination strategy; "
                "check that the strategy files belong to this model"
            )
        for name in deferred:
            out = self._copied(name, target, device_num)
            if name in self.lora_pairs:
                self._check_whole(name, out, target, first_shape[name])
                plan.tensors.extend(self._lora_slices(self.lora_pairs[name], out.regions[0].dst_box, target,
                                                      first_shape))
                out = replace(out, lora_scaling=self.lora.scaling)
            plan.tensors.append(out)
        return plan

    def _check_whole(self, name: str, out: OutTensor, target: _Target, shard_shape: tuple[int, ...]) -> None:
        """A weight only the source strategy lists is copied as one raw source shard (MindSpore's rule):
        there is no whole weight to merge the factors into."""
        layout = target.src_map.get(name) if target.src_map is not None else None
        if out.shape != origin_shape(shard_shape, layout):
            raise MpitransError(f"LoRA merge of parameter {name!r}: the destination strategy does not list it "
                                f"while the source strategy splits it, so target rank {target.rank} would get one "
                                f"raw source shard {list(out.shape)}; add it to the destination strategy")

    def _lora_slices(self, pair: LoraPair, box: Box, target: _Target,
                     first_shape: Mapping[str, tuple[int, ...]]) -> list[OutTensor]:
        """The slices of `pair`'s factors that the target's box of its weight needs, as auxiliary tensors:
        B's rows of the box (all r columns), then A's columns of the box (all r rows)."""
        src_map = target.src_map
        missing = [n for n in (pair.weight, pair.b, pair.a) if n not in first_shape]
        if missing:
            raise MissingShardError(f"LoRA merge of parameter {pair.weight!r}: {missing[0]!r} is in none of the "
                                    f"source checkpoints target rank {target.rank} is built from")
        layouts = {n: src_map.get(n) if src_map is not None else None for n in (pair.weight, pair.b, pair.a)}
        shapes = {n: origin_shape(first_shape[n], layouts[n]) for n in layouts}
        holders = {n: self.catalog.first_holder(n) for n in layouts}
        dtypes = {n: self.catalog.by_name[holders[n]][n].dtype for n in layouts}
        check_shapes(pair, shapes, dtypes, f"checkpoint of source rank {holders[pair.weight]}")
        rank = shapes[pair.a][0]
        (r0, r1), (c0, c1) = box
        out = []
        for name, role, want in ((pair.b, ROLE_B, ((r0, r1), (0, rank))), (pair.a, ROLE_A, ((0, rank), (c0, c1)))):
            out.append(self._slice(name, role, want, layouts[name], shapes[name], target))
        return out

    def _slice(self, name: str, role: str, box: Box, src_layout: ParamLayout | None, full_shape: tuple[int, ...],
               target: _Target) -> OutTensor:
        """One auxiliary tensor: `box` of `name`'s full tensor, with regions from its source shards."""
        try:
            flat = flatten_layout(src_layout, full_shape)
        except LayoutError as exc:
            raise LayoutError(f"parameter {name!r}: {exc}") from None
        pieces = tuple((relative(common, box), relative(common, shard), tuple(members))
                       for shard, common, members in overlapping_shards(flat, box))
        stages = src_layout.stages if src_layout is not None else (0,)
        regions, supplier = self._regions(name, _Template(-1, box_shape(box), stages, pieces, (), box), target.loaded)
        if supplier is None:
            raise MissingShardError(f"LoRA factor {name!r}: no source checkpoint holding the slice target rank "
                                    f"{target.rank} needs was found")
        return OutTensor(name, self.catalog.by_name[supplier][name].dtype, box_shape(box), regions, role=role)

    def _copied(self, name: str, target: _Target, device_num: int) -> OutTensor:
        """A parameter absent from a strategy: MindSpore copies it whole from source local rank
        `local % device_num` (device_num: the last planned parameter's source device count)."""
        src_local = target.local % device_num
        cands = self.catalog.candidates(name, src_local, target.loaded.chosen(name, src_local))
        holder = self.catalog.first_holder(name)
        if not cands:
            # MindSpore copies it from source rank `src_local`, whose file nobody indexed: name that
            # file (the engine reports it as missing), taking dtype and shape from another copy.
            cands = (src_local,)
        if holder is None:
            raise MissingShardError(f"parameter {name!r} of target rank {target.rank}: no source checkpoint holds it")
        meta = self.catalog.by_name[cands[0] if cands[0] in self.catalog.by_name else holder][name]
        full = tuple((0, s) for s in meta.shape)
        return OutTensor(name, meta.dtype, meta.shape, (Region(full, full, cands),))

    def _transform(self, name: str, shard_shape: tuple[int, ...], src_layout: ParamLayout | None,
                   dst_layout: ParamLayout | None, target: _Target) -> OutTensor:
        """One parameter's regions: its template's geometry with the candidates of its holder class."""
        tpl = self._template(name, target.local, shard_shape, src_layout, dst_layout)
        key = (tpl.key, self.catalog.holder_class(name))
        found = target.regions.get(key)
        if found is None:
            found = target.regions[key] = self._regions(name, tpl, target.loaded)
        regions, supplier = found
        if supplier is None:
            raise MissingShardError(
                f"parameter {name!r}: no source checkpoint holding it was found "
                f"(source ranks {sorted({g for r in regions for g in r.candidates})})"
            )
        return OutTensor(name, self.catalog.by_name[supplier][name].dtype, tpl.shape, regions,
                         holders=target.holders(tpl))

    def _regions(self, name: str, tpl: _Template, loaded: LoadOrder) -> tuple[tuple[Region, ...], int | None]:
        """The template's regions with `name`'s candidates (the same for every name of its holder class),
        and the file whose dtype the target takes: the first candidate of the first region that has one."""
        catalog, sd = self.catalog, self.src_stage_devices
        regions = []
        supplier = None
        for dst_box, src_box, members in tpl.pieces:
            cands: list[int] = []
            seen: set[int] = set()
            for m in members:
                for g in catalog.candidates(name, m, loaded.chosen(name, m)):
                    if g not in seen:
                        seen.add(g)
                        cands.append(g)
            if cands:
                supplier = cands[0] if supplier is None else supplier
            else:
                # Nobody indexed a file holding this shard: name the files that should, so the job can
                # report every missing `rank_x` before moving any byte; if they were all indexed, none
                # of them (replicas of a de-duplicated source included) holds it.
                expected = sorted({s * sd + m for m in members for s in tpl.stages})
                cands = [g for g in expected if g not in catalog.metas]
                if not cands:
                    raise MissingShardError(
                        f"parameter {name!r}: no source checkpoint holds the slice of it this target needs "
                        f"(searched {rank_span(expected)}, the ranks holding that slice: their files lack it)")
            regions.append(Region(dst_box, src_box, tuple(cands)))
        return tuple(regions), supplier

    def _template(self, name: str, local: int, shard_shape: tuple[int, ...], src_layout: ParamLayout | None,
                  dst_layout: ParamLayout | None) -> _Template:
        """The geometry shared by every parameter with this shard shape and these layouts in target `local`."""
        cache = self._templates.get(local)
        if cache is None:
            if len(self._templates) >= _TEMPLATE_LOCALS:
                del self._templates[next(iter(self._templates))]
            cache = self._templates[local] = {}
        key = (tuple(shard_shape), src_layout, dst_layout)
        tpl = cache.get(key)
        if tpl is None:
            tpl = cache[key] = _geometry(next(self._template_keys), name, local, key[0], src_layout, dst_layout,
                                         self.dst_stage_devices)
        return tpl


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
    return rank_list_from(rank, rank_list_basis(src_map, dst_map, src.source))
