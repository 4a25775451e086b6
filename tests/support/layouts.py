"""Compact, hashable descriptions of resharding test cases, and a seeded generator of valid ones.

A `Case` is everything needed to reproduce one `mindspore.transform_checkpoints` run: the parameters of
the model (`ParamSpec`), the source and target layouts (`LayoutSpec`, or None for "full", i.e. no
strategy file), the content seed and a few switches. `tests.support.oracle` turns a Case into files and
MindSpore's expected output; this module never imports mindspore, so generating and hashing cases is
instant and works in any process.

Layouts (`mpitrans.fixtures.layouts.LayoutEntry`) follow the rules MindSpore's own strategy writer follows
(see `opt_shard_fields`), and `random_case` only generates what MindSpore 2.10's transformer accepts (see the
oracle's docstring for what it rejects), so a failure of mpitrans against a random case is a real
difference, never a bad case.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from math import prod

from mpitrans.fixtures.layouts import LayoutEntry, TensorMapEntry, axis_size, opt_shard_fields, replica_axes
from mpitrans.fixtures.random_layouts import random_layout

# Every dtype MindSpore 2.10 saves, loads and transforms losslessly (checked by the oracle self-check).
DTYPES = ("float32", "float16", "bfloat16", "int32", "int8", "int64", "float64", "bool", "uint8")

# Names real training runs save without any strategy entry; MindSpore copies them unchanged from one
# source rank (which one is part of what the oracle pins down).
EXTRA_NAMES = ("global_step", "learning_rate", "loss_scale", "current_iterator_step", "epoch_num")

# Prefixes of optimizer-state copies of a parameter; their layout is the parameter's.
STATE_PREFIXES = ("adam_m.", "adam_v.", "accu_grads.")


def base_name(name: str) -> str:
    """The parameter an optimizer state belongs to (`adam_m.w` -> `w`); other names unchanged."""
    for p in STATE_PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


@dataclass(frozen=True)
class ParamSpec:
    """One tensor of the checkpoint: name, full (unsharded) shape and dtype name (see DTYPES)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {self.dtype!r}")
        if "-" in self.name:
            # MindSpore splits strategy names on "-" to find the pipeline stage and crashes otherwise.
            raise ValueError(f"parameter names must not contain '-': {self.name!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def nbytes(self) -> int:
        size = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4, "int8": 1, "int64": 8, "float64": 8,
                "bool": 1, "uint8": 1}[self.dtype]
        return size * prod(self.shape)


def mindspore_misplaces(layout: LayoutEntry) -> bool:
    """Whether MindSpore 2.10's transformer assigns this layout's slices to other ranks than training does.

    It happens on the "simple path" of `_construct_tensor_layout_for_opt_shard` (optimizer-sharded, flat
    tensor map, and the only replica axis is the first device axis, or every axis is a replica): the
    device matrix is rebuilt from the tensor strategy in tensor-dimension order, which is only right when
    the split axes (of size > 1) decrease along the tensor, e.g. dev (4, 2, 2) with tensor map (0, 1)
    goes wrong. Outputs are still self-consistent (a round trip through MindSpore is exact).
    """
    if not layout.opt_shard_step or not layout.opt_shard_size or layout.multi_axis:
        return False
    dm = layout.dev_matrix
    repeated = replica_axes(layout)
    if not repeated or (1 < len(repeated) < len(dm)) or repeated[0] > 0:
        return False
    split = [a for a in layout.tensor_map if isinstance(a, int) and a != -1 and axis_size(dm, a) > 1]
    return any(x <= y for x, y in zip(split, split[1:], strict=False))


@dataclass(frozen=True)
class LayoutSpec:
    """One side's strategy: per pipeline stage, the (name, layout) entries in file order.

    One stage means an ordinary strategy file; several mean per-stage files (stage s holding ranks
    ``s * n .. s * n + n - 1``) plus the merged file `mindspore.merge_pipeline_strategys` makes. A name
    may appear in several stages (a shared embedding), possibly with different layouts.
    """

    stages: tuple[tuple[tuple[str, LayoutEntry], ...], ...]

    def __post_init__(self) -> None:
        stages = tuple(tuple((str(n), lay) for n, lay in st) for st in self.stages)
        object.__setattr__(self, "stages", stages)
        if not stages or any(not st for st in stages):
            raise ValueError("every stage needs at least one parameter")
        counts = {lay.device_num for st in stages for _, lay in st}
        if len(counts) != 1:
            raise ValueError(f"all layouts of a strategy must cover the same device count, got {counts}")

    @classmethod
    def single(cls, layouts: Mapping[str, LayoutEntry] | Iterable[tuple[str, LayoutEntry]]) -> LayoutSpec:
        items = layouts.items() if isinstance(layouts, Mapping) else layouts
        return cls((tuple(items),))

    @classmethod
    def pipeline(cls, stages: Sequence[Mapping[str, LayoutEntry]]) -> LayoutSpec:
        return cls(tuple(tuple(st.items()) for st in stages))

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def stage_device_num(self) -> int:
        return self.stages[0][0][1].device_num

    @property
    def device_num(self) -> int:
        return self.stage_device_num * self.num_stages

    def names(self) -> set[str]:
        return {n for st in self.stages for n, _ in st}

    def stage_layouts(self, stage: int) -> dict[str, LayoutEntry]:
        return dict(self.stages[stage])

    def check(self, params: Iterable[ParamSpec]) -> None:
        shapes = {p.name: p.shape for p in params}
        for st in self.stages:
            for name, lay in st:
                if name not in shapes:
                    raise ValueError(f"strategy names unknown parameter {name!r}")
                lay.check(shapes[name])


@dataclass(frozen=True)
class Case:
    """One oracle run: full checkpoint content, both layouts, and switches.

    - `src`/`dst` None: the side has no strategy file (full, unsharded checkpoint on rank 0).
    - `src_stage`: give MindSpore only stage `src_stage`'s own strategy file as the source (not the merged
      one); with a full-model target that selects its `_transform_checkpoint_by_stage` path and the
      ``checkpoint_{r}_part{stage}.ckpt`` outputs.
    - `distinct_extras`: in every source shard, parameters absent from the source strategy get a value
      that depends on the source rank, so the test sees which rank MindSpore copied them from.
    - `fmt`: "pb" or "json" strategy files (JSON cannot hold multi-axis tensor maps).
    """

    params: tuple[ParamSpec, ...]
    src: LayoutSpec | None
    dst: LayoutSpec | None
    seed: int = 0
    src_stage: int | None = None
    distinct_extras: bool = False
    fmt: str = "pb"
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(self.params))
        names = [p.name for p in self.params]
        if len(names) != len(set(names)):
            raise ValueError("duplicate parameter names")
        for side in (self.src, self.dst):
            if side is not None:
                side.check(self.params)
        if self.src_stage is not None and (self.src is None or not 0 <= self.src_stage < self.src.num_stages):
            raise ValueError("src_stage needs a pipeline source with that stage")
        if self.fmt not in ("pb", "json"):
            raise ValueError(f"unknown strategy format {self.fmt!r}")

    def to_json(self) -> dict:
        """Canonical plain-data form (also the cache key's input; `label` is not part of it)."""

        def side(s: LayoutSpec | None) -> list | None:
            if s is None:
                return None

            def tmap(lay: LayoutEntry) -> list:
                return [list(e) if isinstance(e, tuple) else e for e in lay.tensor_map]

            return [[[n, list(lay.dev_matrix), tmap(lay), lay.opt_shard_step, lay.opt_shard_size]
                     for n, lay in st] for st in s.stages]

        return {"params": [[p.name, list(p.shape), p.dtype] for p in self.params], "src": side(self.src),
                "dst": side(self.dst), "seed": self.seed, "src_stage": self.src_stage,
                "distinct_extras": self.distinct_extras, "fmt": self.fmt}

    @classmethod
    def from_json(cls, d: Mapping, label: str = "") -> Case:
        def side(s: list | None) -> LayoutSpec | None:
            if s is None:
                return None

            def lay(dm: list, tm: list, step: int, size: int) -> LayoutEntry:
                tmap = tuple(tuple(e) if isinstance(e, list) else e for e in tm)
                return LayoutEntry(tuple(dm), tmap, step, size)

            return LayoutSpec(tuple(tuple((e[0], lay(*e[1:])) for e in st) for st in s))

        return cls(tuple(ParamSpec(n, tuple(sh), dt) for n, sh, dt in d["params"]), side(d["src"]),
                   side(d["dst"]), d["seed"], d["src_stage"], d["distinct_extras"], d["fmt"], label)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def strategy_names(self) -> set[str]:
        out: set[str] = set()
        for s in (self.src, self.dst):
            if s is not None:
                out |= s.names()
        return out

    @property
    def total_bytes(self) -> int:
        return sum(p.nbytes for p in self.params)


# ---------------------------------------------------------------------------------------------------
# Builders for common layouts.


def model_params(names_shapes: Sequence[tuple[str, Sequence[int]]], dtype: str = "float32",
                 adam: bool = False, extras: Sequence[str] = ()) -> tuple[ParamSpec, ...]:
    """Parameters, optionally followed by their `adam_m.`/`adam_v.` states and strategy-less extras."""
    out = [ParamSpec(n, tuple(s), dtype) for n, s in names_shapes]
    if adam:
        out += [ParamSpec(f"{pre}{n}", tuple(s), "float32")
                for pre in ("adam_m.", "adam_v.") for n, s in names_shapes]
    ints = ("global_step", "current_iterator_step", "epoch_num")
    out += [ParamSpec(n, (1,), "int32" if n in ints else "float32") for n in extras]
    return tuple(out)


def split_map(shape: Sequence[int], dev_matrix: Sequence[int], prefer: int = 0) -> tuple[int, ...]:
    """A one-axis-per-dimension tensor map that splits dimension `prefer` (else any dimension) by the
    device matrix's last axis (axis 0) if it divides, and leaves the rest replicated."""
    tmap = [-1] * len(shape)
    mp = dev_matrix[-1]
    first = prefer % len(shape) if shape else 0
    order = [first] + [i for i in range(len(shape)) if i != first] if shape else []
    if mp > 1:
        for d in order:
            if shape[d] % mp == 0:
                tmap[d] = 0
                break
    return tuple(tmap)


def _layouts_for(params: Iterable[ParamSpec], make) -> dict[str, LayoutEntry]:
    """Layouts of every non-extra parameter; optimizer states copy their parameter's layout."""
    shapes = {p.name: p.shape for p in params}
    out: dict[str, LayoutEntry] = {}
    made: dict[str, LayoutEntry] = {}
    for i, (name, shape) in enumerate(shapes.items()):
        if name in EXTRA_NAMES:
            continue
        base = base_name(name)
        if base not in made:
            made[base] = make(i, shapes.get(base, shape))
        out[name] = made[base]
    return out


def dp_mp(dp: int, mp: int, params: Iterable[ParamSpec], opt_shard: bool | int = False) -> LayoutSpec:
    """Device matrix (dp, mp): every parameter split by mp on one dimension (alternating between first and
    last), replicated over dp; with `opt_shard` (True = size -1, or an int size) also optimizer-sharded
    over dp where MindSpore would."""
    params = list(params)
    size = -1 if opt_shard is True else int(opt_shard)

    def make(i: int, shape: tuple[int, ...]) -> LayoutEntry:
        tmap = split_map(shape, (dp, mp), prefer=0 if i % 2 == 0 else -1)
        step, sz = opt_shard_fields((dp, mp), tmap, shape, size) if opt_shard else (0, 0)
        return LayoutEntry((dp, mp), tmap, step, sz)

    return LayoutSpec.single(_layouts_for(params, make))


def with_layout(params: Iterable[ParamSpec], dev_matrix: Sequence[int],
                tensor_maps: Mapping[str, Sequence[TensorMapEntry]],
                opt_shard: bool | int = False) -> LayoutSpec:
    """Explicit tensor maps by base parameter name (replicated where missing), one device matrix."""
    params = list(params)
    size = -1 if opt_shard is True else int(opt_shard)
    names = [p.name for p in params]

    def make(i: int, shape: tuple[int, ...]) -> LayoutEntry:
        tmap = tuple(tensor_maps.get(base_name(names[i]), (-1,) * len(shape)))
        step, sz = opt_shard_fields(dev_matrix, tmap, shape, size) if opt_shard else (0, 0)
        return LayoutEntry(tuple(dev_matrix), tmap, step, sz)

    return LayoutSpec.single(_layouts_for(params, make))


def assign_stages(params: Iterable[ParamSpec], num_stages: int,
                  shared: Sequence[str] = ()) -> list[list[str]]:
    """Contiguous stage assignment of the base parameters (states follow them); `shared` base names are
    also placed in the last stage, the way a tied embedding lives in the first and last stage."""
    params = [p for p in params if p.name not in EXTRA_NAMES]
    bases = list(dict.fromkeys(base_name(p.name) for p in params))
    if len(bases) < num_stages:
        raise ValueError("fewer parameters than stages")
    per = [len(bases) // num_stages + (1 if s < len(bases) % num_stages else 0) for s in range(num_stages)]
    stage_of: dict[str, set[int]] = {}
    pos = 0
    for s, k in enumerate(per):
        for b in bases[pos:pos + k]:
            stage_of[b] = {s}
        pos += k
    for b in shared:
        stage_of[b].add(num_stages - 1)
    return [[p.name for p in params if s in stage_of[base_name(p.name)]] for s in range(num_stages)]


def pipeline(num_stages: int, dp: int, mp: int, params: Iterable[ParamSpec], opt_shard: bool | int = False,
             shared: Sequence[str] = ()) -> LayoutSpec:
    """`num_stages` stages of dp x mp devices each, parameters assigned contiguously (`assign_stages`)."""
    params = list(params)
    flat = dp_mp(dp, mp, params, opt_shard).stage_layouts(0)
    stages = assign_stages(params, num_stages, shared)
    return LayoutSpec.pipeline([{n: flat[n] for n in names} for names in stages])


# ---------------------------------------------------------------------------------------------------
# Random cases.

_DEVICE_COUNTS = (1, 2, 3, 4, 6, 8)
_DIM_SIZES = (2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def _random_layouts_for(rng: random.Random, params: Sequence[ParamSpec], n: int, multi_axis: bool,
                        opt_size: int | None) -> dict[str, LayoutEntry]:
    """Random "training" layouts over n devices for the non-extra parameters; states share their parameter's."""

    def make(_i: int, shape: tuple[int, ...]) -> LayoutEntry:
        return random_layout(rng, profile="training", shape=shape, devices=n, multi_axis=multi_axis,
                             opt_shard=opt_size)

    return _layouts_for(params, make)


def random_params(rng: random.Random) -> tuple[ParamSpec, ...]:
    """A handful of parameters (a few KB to ~100 KB each side), Adam states, extras, shuffled a little."""
    k = rng.randint(2, 5)
    base: list[ParamSpec] = []
    for i in range(k):
        ndim = rng.choice((1, 2, 2, 2, 3))
        shape = tuple(rng.choice(_DIM_SIZES) for _ in range(ndim))
        if ndim == 2 and rng.random() < 0.5:
            shape = (rng.choice(_DIM_SIZES[-4:]), rng.choice(_DIM_SIZES[-6:]))
        if ndim == 3:
            shape = tuple(min(s, 12) for s in shape)
        dtype = rng.choice(("float32", "float32", "float16", "bfloat16", "int32", "float64", "int8", "bool",
                            "uint8", "int64"))
        base.append(ParamSpec(f"layer{i}.{'weight' if ndim > 1 else 'bias'}", shape, dtype))
    out = list(base)
    if rng.random() < 0.6:
        for pre in ("adam_m.", "adam_v."):
            out += [ParamSpec(pre + p.name, p.shape, "float32")
                    for p in base if p.dtype.startswith(("float", "bf"))]
    extras = rng.sample(EXTRA_NAMES, rng.randint(0, 3))
    for e in extras:
        dtype = "int32" if e in ("global_step", "current_iterator_step", "epoch_num") else "float32"
        shape = () if e == "learning_rate" and rng.random() < 0.5 else (1,)
        out.insert(rng.randrange(len(out) + 1), ParamSpec(e, shape, dtype))
    return tuple(out)


def _random_side(rng: random.Random, params: Sequence[ParamSpec], n: int, stages: int, multi_axis: bool,
                 opt_size: int | None) -> LayoutSpec:
    if stages == 1:
        return LayoutSpec.single(_random_layouts_for(rng, params, n, multi_axis, opt_size))
    bases = [p.name for p in params if p.name not in EXTRA_NAMES and base_name(p.name) == p.name]
    shared = [bases[0]] if rng.random() < 0.3 else []
    groups = assign_stages(params, stages, shared)
    out = []
    for names in groups:
        lays = _random_layouts_for(rng, [p for p in params if p.name in names], n, multi_axis, opt_size)
        out.append({nm: lays[nm] for nm in names})
    return LayoutSpec.pipeline(out)


def _model_keys(names: Iterable[str]) -> set[str]:
    """The names MindSpore compares to pick its single-stage path (optimizer states left out)."""
    return {n for n in names if not n.startswith(("accu_grads", "adam_v", "adam_m"))}


def random_case(seed: int) -> Case:
    """A random Case MindSpore accepts: 1-8 devices per side (stage device counts dividing one another;
    MindSpore rejects other pairs), random device matrices and tensor maps, optimizer sharding on either
    side, sometimes a full side, a pipeline side (2-3 stages, maybe a shared parameter), the single-stage
    `_part` path, mixed dtypes, Adam states and strategy-less extras."""
    rng = random.Random(seed)
    params = random_params(rng)
    n_bases = len({base_name(p.name) for p in params if p.name not in EXTRA_NAMES})
    fmt = "json" if rng.random() < 0.1 else "pb"
    multi = fmt == "pb" and rng.random() < 0.3

    def side_shape() -> tuple[int, int] | None:
        r = rng.random()
        if r < 0.15:
            return None
        stages = rng.choice((2, 3)) if r > 0.8 and n_bases >= 2 else 1
        return rng.choice(_DEVICE_COUNTS), min(stages, n_bases)

    src_shape, dst_shape = side_shape(), side_shape()
    if src_shape is None and dst_shape is None:  # MindSpore refuses full -> full
        dst_shape = (rng.choice(_DEVICE_COUNTS[1:]), 1)
    if src_shape and dst_shape:
        # Stage device counts must divide one another, and a pipeline target with one device per stage
        # breaks MindSpore's rank list (it takes the global rank for the local one) unless the source is full.
        a = src_shape[0]
        ok = [d for d in _DEVICE_COUNTS if max(a, d) % min(a, d) == 0 and (dst_shape[1] == 1 or d > 1)]
        if dst_shape[0] not in ok:
            dst_shape = (rng.choice(ok), dst_shape[1])
    opt = lambda: rng.choice((None, None, -1, 2))  # noqa: E731
    src = _random_side(rng, params, *src_shape, multi, opt()) if src_shape else None
    dst = _random_side(rng, params, *dst_shape, multi, opt()) if dst_shape else None
    src_stage = None
    pp_to_flat = src is not None and src.num_stages > 1 and dst is not None and dst.num_stages == 1
    if pp_to_flat and rng.random() < 0.4:
        stage = rng.randrange(src.num_stages)
        if len(_model_keys(src.stage_layouts(stage))) < len(_model_keys(dst.names())):
            src_stage = stage
    return Case(params, src, dst, seed=seed, src_stage=src_stage, distinct_extras=rng.random() < 0.5, fmt=fmt,
                label=f"random{seed}")


# ---------------------------------------------------------------------------------------------------
# Named cases: one per layout kind, for readable test ids and for the oracle's own checks.

MODEL = (ParamSpec("global_step", (1,), "int32"), ParamSpec("embedding.table", (32, 16), "bfloat16"),
         ParamSpec("layer0.weight", (16, 24)), ParamSpec("layer0.bias", (24,), "float16"),
         ParamSpec("layer1.weight", (24, 16)), ParamSpec("learning_rate", (), "float32"),
         ParamSpec("head.weight", (16, 32)))


def _with_adam(params: Sequence[ParamSpec]) -> tuple[ParamSpec, ...]:
    out = list(params)
    for pre in ("adam_m.", "adam_v."):
        out += [ParamSpec(pre + p.name, p.shape, "float32") for p in params if p.name not in EXTRA_NAMES]
    return tuple(out)


def _drop(layout: LayoutSpec, names: set[str]) -> LayoutSpec:
    return LayoutSpec(tuple(tuple((n, lay) for n, lay in st if n not in names) for st in layout.stages))


def catalog() -> dict[str, Case]:
    """Hand-picked Cases MindSpore accepts, one per layout kind / quirk (see the oracle's docstring)."""
    m = MODEL
    ma = _with_adam(MODEL)
    tied = ("embedding.table",)
    dtypes = tuple(ParamSpec(f"p_{dt}", (8, 4), dt) for dt in DTYPES) + (
        ParamSpec("learning_rate", (), "float32"), ParamSpec("global_step", (1,), "int32"))
    multi = {"embedding.table": ((2, 1), (0,)), "layer0.weight": ((0,), (2, 1)), "layer0.bias": ((1, 0),),
             "layer1.weight": ((2,), (-1,)), "head.weight": ((-1,), (0, 2))}
    multi_no_bias = {k: v for k, v in multi.items() if k != "layer0.bias"}
    swap = LayoutEntry((4, 2, 2), (0, 1), *opt_shard_fields((4, 2, 2), (0, 1), (16, 24)))
    cases = {
        "full_to_dp2mp2": Case(m, None, dp_mp(2, 2, m)),
        "dp2mp2_to_full": Case(m, dp_mp(2, 2, m), None),
        "dp2mp2_to_dp1mp4": Case(m, dp_mp(2, 2, m), dp_mp(1, 4, m)),
        "dp2mp2_to_dp4mp2": Case(m, dp_mp(2, 2, m), dp_mp(4, 2, m)),
        "dp4mp2_to_dp1mp2": Case(m, dp_mp(4, 2, m), dp_mp(1, 2, m)),
        "dp1mp2_to_dp1mp1": Case(m, dp_mp(1, 2, m), dp_mp(1, 1, m)),
        "full_to_dp1mp3": Case(m, None, dp_mp(1, 3, m)),
        "dp1mp3_to_dp2mp3": Case(m, dp_mp(1, 3, m), dp_mp(2, 3, m)),
        "dp2mp3_to_dp1mp2": Case(m, dp_mp(2, 3, m), dp_mp(1, 2, m)),
        "full_to_opt_dp4mp2": Case(ma, None, dp_mp(4, 2, ma, opt_shard=True)),
        "opt_dp4mp2_to_full": Case(ma, dp_mp(4, 2, ma, opt_shard=True), None),
        "opt2_dp4mp2_to_opt_dp2mp2": Case(ma, dp_mp(4, 2, ma, opt_shard=2), dp_mp(2, 2, ma, opt_shard=True)),
        "opt_dp8_replicated_size2": Case(m, with_layout(m, (2, 2, 2), {}, opt_shard=2), dp_mp(1, 2, m)),
        "opt_swapped_axes": Case(m, None, LayoutSpec.single({"layer0.weight": swap})),
        "full_to_multi_axis": Case(m, None, with_layout(m, (2, 2, 2), multi)),
        "multi_axis_to_dp2mp2": Case(m, with_layout(m, (2, 2, 2), multi), dp_mp(2, 2, m)),
        "multi_axis_opt_to_full": Case(ma, with_layout(ma, (2, 2, 2), multi_no_bias, opt_shard=True), None),
        "pp2_to_full": Case(ma, pipeline(2, 1, 2, ma), None),
        "pp2_to_dp2mp2": Case(ma, pipeline(2, 2, 2, ma), dp_mp(2, 2, ma)),
        "dp2mp2_to_pp2": Case(ma, dp_mp(2, 2, ma), pipeline(2, 2, 1, ma)),
        "pp2_to_pp3": Case(ma, pipeline(2, 2, 2, ma), pipeline(3, 1, 2, ma)),
        "pp2_shared_to_pp2_shared": Case(m, pipeline(2, 1, 2, m, shared=tied),
                                         pipeline(2, 2, 1, m, shared=tied), distinct_extras=True),
        "full_to_pp2_one_device_per_stage": Case(m, None, pipeline(2, 1, 1, m)),
        "pp2_opt_to_dp2mp2": Case(ma, pipeline(2, 2, 2, ma, opt_shard=True), dp_mp(1, 4, ma)),
        "pp2_stage1_part": Case(ma, pipeline(2, 1, 2, ma), dp_mp(2, 2, ma), src_stage=1,
                                distinct_extras=True),
        "pp3_stage2_part_shared": Case(m, pipeline(3, 1, 2, m, shared=tied), dp_mp(1, 4, m),
                                       src_stage=2, distinct_extras=True),
        "distinct_extras_dp2mp2_to_dp1mp2": Case(m, dp_mp(2, 2, m), dp_mp(1, 2, m), distinct_extras=True),
        "distinct_extras_dp1mp2_to_dp4mp1": Case(m, dp_mp(1, 2, m), dp_mp(4, 1, m), distinct_extras=True),
        "distinct_extras_pp2_to_full": Case(m, pipeline(2, 2, 1, m), None, distinct_extras=True),
        "dtypes_full_to_dp2mp2": Case(dtypes, None, dp_mp(2, 2, dtypes)),
        "dtypes_dp2mp2_to_dp1mp4": Case(dtypes, dp_mp(2, 2, dtypes), dp_mp(1, 4, dtypes)),
        "dtypes_opt_dp2mp2_to_full": Case(dtypes, dp_mp(2, 2, dtypes, opt_shard=True), None),
        "json_dp2mp2_to_dp1mp4": Case(m, dp_mp(2, 2, m), dp_mp(1, 4, m), fmt="json"),
        "json_pp2_to_full": Case(ma, pipeline(2, 1, 2, ma), None, fmt="json"),
        "json_pp2_stage0_part": Case(ma, pipeline(2, 1, 2, ma), dp_mp(1, 2, ma), src_stage=0, fmt="json"),
        "src_strategy_lacks_param": Case(m, _drop(dp_mp(2, 2, m), {"layer0.bias"}), dp_mp(1, 4, m),
                                         distinct_extras=True),
        "dst_strategy_lacks_param": Case(m, dp_mp(2, 2, m), _drop(dp_mp(1, 4, m), {"layer0.bias"})),
    }
    for label, c in cases.items():
        object.__setattr__(c, "label", label)
    return cases


def rejected_catalog() -> dict[str, tuple[Case, str]]:
    """Cases MindSpore 2.10 refuses, with a substring of its error (training can produce all but
    full -> full)."""
    m = MODEL
    rep = LayoutEntry((2, 3, 1), (-1, -1), *opt_shard_fields((2, 3, 1), (-1, -1), (16, 24), 2))
    cases = {
        "coprime_3_to_2": (Case(m, dp_mp(1, 3, m), dp_mp(1, 2, m)),
                           "Cannot transform device_num from 3 to 2"),
        "coprime_6_to_4": (Case(m, dp_mp(2, 3, m), dp_mp(2, 2, m)),
                           "Cannot transform device_num from 6 to 4"),
        "full_to_full": (Case(m, None, None), "None of the parameters in checkpoint file are in either"),
        "opt_size_splits_axis_of_3": (Case(m, None, LayoutSpec.single({"layer0.weight": rep})),
                                      "cannot be divided by needed opt sharding size 2"),
        "pp_target_one_device_per_stage": (Case(m, dp_mp(2, 1, m), pipeline(2, 1, 1, m)),
                                           "The checkpoint of rank 0 is missing"),
        "pp3_target_one_device_per_stage": (Case(m, dp_mp(1, 2, m), pipeline(3, 1, 1, m)),
                                            "Rank 2 is not in the current stage"),
        "stage1_file_to_full": (Case(m, pipeline(2, 1, 2, m), None, src_stage=1),
                                "None of the parameters in checkpoint file are in either"),
    }
    for label, (c, _) in cases.items():
        object.__setattr__(c, "label", label)
    return cases
