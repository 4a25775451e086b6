"""MindSpore's derived views of a strategy: per-parameter layouts, stage counts, the per-rank cut.

Resharding must pick, for every parameter and rank, exactly the layout MindSpore would pick, or the
result differs from `mindspore.transform_checkpoints` in subtle places (parameters shared by two pipeline
stages, such as tied embeddings, are the usual victims). So these functions follow MindSpore's rules
literally, quirks included, and say so where a rule looks surprising:

* a parameter named ``"a-b"`` is always read as stage ``a`` of parameter ``b``; a name with two dashes,
  or a prefix that is not an integer, makes the strategy unusable (MindSpore raises as well);
* for a name present in several stages, without a rank the layout of the lowest stage wins; with a rank,
  stage 0's layout wins for ranks of the first stage and the *last* non-zero stage in file order wins for
  every other rank, whichever stage that rank is really in;
* one TensorMap message gives a flat tensor map of ints, several give one tuple per message with empty
  messages dropped (MindSpore adds an empty one after a lone multi-axis dimension to force this form).
"""

from __future__ import annotations

import math

from mpitrans.errors import StrategyError
from mpitrans.strategy.model import ParamLayout, RawLayout, StrategyFile, TensorMapEntry

__all__ = [
    "layout_map",
    "layout_maps_by_stage",
    "pipeline_stage_num",
    "src_dst_layout_maps",
]


def _floordiv(a: int, b: int) -> int:
    # MindSpore divides a Python int by a numpy product; numpy answers 0 (with a warning) for a zero divisor.
    return a // b if b else 0


def _fail(strategy: StrategyFile, name: str, why: str) -> StrategyError:
    src = f" {strategy.source}" if strategy.source else ""
    return StrategyError(f"strategy{src}: parameter {name!r}: {why}; MindSpore cannot use this strategy "
                         f"either (check that the strategy file is right)")


def _tensor_map(raw: RawLayout) -> tuple[TensorMapEntry, ...] | None:
    if not raw.tensor_map:
        return None
    if len(raw.tensor_map) > 1:
        return tuple(tuple(m) for m in raw.tensor_map if m)
    return tuple(raw.tensor_map[0])


def layout_map(strategy: StrategyFile, rank_id: int | None = None) -> dict[str, ParamLayout]:
    """MindSpore's `_convert_to_list`: origin parameter name -> layout, in MindSpore's insertion order.

    `rank_id` only matters for names present in several stages (see the module notes). The stages tuple
    lists every stage the name appears in, in file order. A job asks for the same maps many times (every
    planner, every check), so each is computed once per strategy object and handed out as a fresh dict.
    """
    # Kept on the object, keyed by what the map depends on, and dropped if the layout list grew since.
    cache = strategy.__dict__.setdefault("_layout_maps", {})
    if cache.get("size") != len(strategy.layouts):
        cache.clear()
        cache["size"] = len(strategy.layouts)
        cache["counts"] = sorted({math.prod(raw.dev_matrix_messages()[0]) for _, raw in strategy.layouts
                                  if raw.dev_matrix_messages()})
    # With a rank, only whether it is in the first stage under each device count matters (see below).
    key = None if rank_id is None else tuple(_floordiv(rank_id, n) == 0 for n in cache["counts"])
    found = cache.get(key)
    if found is None:
        found = cache[key] = _layout_map(strategy, rank_id)
    return dict(found)


def _layout_map(strategy: StrategyFile, rank_id: int | None) -> dict[str, ParamLayout]:
    # A file may repeat a name; MindSpore first builds a dict, so the first position and the last value count.
    entries: dict[str, RawLayout] = {}
    for name, raw in strategy.layouts:
        entries[name] = raw

    chosen: dict[str, tuple[ParamLayout, list[int]]] = {}
    for name, raw in entries.items():
        devs = raw.dev_matrix_messages()
        if not devs:
            raise _fail(strategy, name, "the layout has no dev_matrix")
        tmap = _tensor_map(raw)
        if tmap is None:
            raise _fail(strategy, name, "the layout has no tensor_map")
        splits = raw.param_split_shape_messages()
        if not splits:
            raise _fail(strategy, name, "the layout has no param_split_shape message")
        stage, origin = 0, name
        if "-" in name:
            parts = name.split("-")
            if len(parts) != 2:
                raise _fail(strategy, name, "a name may hold at most one '-', the stage separator")
            try:
                stage = int(parts[0])
            except ValueError:
                why = f"the text before '-' ({parts[0]!r}) is not a stage number"
                raise _fail(strategy, name, why) from None
            origin = parts[1]
        dev = devs[0]
        layout = ParamLayout(dev, tmap, splits[0], raw.field, raw.opt_weight_shard_step,
                             raw.opt_weight_shard_size, ())
        if origin not in chosen:
            chosen[origin] = (layout, [stage])
            continue
        previous, stages = chosen[origin]
        stages = stages + [stage]
        if rank_id is not None:
            local_stage = _floordiv(rank_id, math.prod(dev))
            take = (local_stage == 0 and stage == 0) or (local_stage > 0 and stage > 0)
        else:
            take = stage <= min(stages)
        chosen[origin] = (layout if take else previous, stages)

    return {name: _with_stages(layout, stages) for name, (layout, stages) in chosen.items()}


def _with_stages(layout: ParamLayout, stages: list[int]) -> ParamLayout:
    return ParamLayout(layout.dev_matrix, layout.tensor_map, layout.param_split_shape, layout.field,
                       layout.opt_shard_step, layout.opt_shard_size, tuple(stages))


def pipeline_stage_num(strategy: StrategyFile | None) -> int:
    """MindSpore's `_extract_pipeline_stage_num`: number of stages, which must be exactly 0..n-1."""
    if strategy is None:
        return 1
    stages: set[int] = set()
    for layout in layout_map(strategy).values():
        stages.update(layout.stages)
    if stages != set(range(len(stages))):
        src = f" {strategy.source}" if strategy.source else ""
        raise StrategyError(f"the pipeline-parallel strategy{src} does not contain all stages: it has stages "
                            f"{sorted(stages)}; merge the strategy files of every stage")
    return len(stages)


def src_dst_layout_maps(
    rank_id: int, src: StrategyFile | None, dst: StrategyFile | None
) -> tuple[dict[str, ParamLayout] | None, dict[str, ParamLayout] | None]:
    """MindSpore's `_extract_src_dst_layout_map`: both maps cut to the destination rank's stage.

    The source map is built without a rank, the destination map for `rank_id`. A parameter the
    destination stage does not hold is dropped from both maps; source-only parameters stay.
    """
    src_map = layout_map(src) if src is not None else None
    if dst is None:
        return src_map, None
    dst_map = layout_map(dst, rank_id)
    if not dst_map:
        raise StrategyError(f"the destination strategy {dst.source} holds no parameter layouts")
    # An empty device matrix counts as one device here (numpy's product of nothing).
    dst_stage = _floordiv(rank_id, math.prod(next(iter(dst_map.values())).dev_matrix))
    for name in list(dst_map):
        if dst_stage in dst_map[name].stages:
            continue
        del dst_map[name]
        if src_map is not None:
            src_map.pop(name, None)
    return src_map, dst_map


def layout_maps_by_stage(strategy: StrategyFile) -> dict[int, dict[str, ParamLayout]]:
    """Each pipeline stage's own layouts: stage -> origin name -> that stage's layout of it.

    `layout_map` picks one layout per name for the whole model; a parameter shared by two stages (a tied
    embedding) may be split differently in each, and a stage's checkpoint files hold the shards of their
    own stage's layout. Checking a file's shard shapes therefore needs its stage's view. Names without a
    ``"{stage}-"`` prefix belong to stage 0.
    """
    by_stage: dict[int, list[tuple[str, RawLayout]]] = {}
    for name, raw in strategy.layouts:
        stage = 0
        if "-" in name:
            try:
                stage = int(name.split("-")[0])
            except ValueError:
                stage = 0  # layout_map refuses such a name anyway
        by_stage.setdefault(stage, []).append((name, raw))
    return {stage: layout_map(StrategyFile(layouts=entries, source=strategy.source))
            for stage, entries in by_stage.items()}
