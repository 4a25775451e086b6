"""Before planning ends: which source files MindSpore's transform would read, whether the destination
describes the model the sources hold, and whether every planned region has a file some process sees.

Pure functions of the strategies, the indexed metadata and who sees which file; the job layer runs them
inside an agreement step so every rank reports the same problem.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence

from mpitrans.errors import MissingShardError, MpitransError
from mpitrans.metadata import TensorMeta
from mpitrans.plan.dedup import stage_ranks
from mpitrans.plan.planner import Planner, TargetPlan
from mpitrans.storage.discover import describe_missing, rank_span
from mpitrans.strategy.layout_map import layout_map, layout_maps_by_stage
from mpitrans.strategy.model import StrategyFile

log = logging.getLogger("mpitrans")


def needed_sources(src: StrategyFile | None, dst: StrategyFile | None, prefix: str) -> set[int]:
    """MindSpore's rule for the files a whole transform loads (every target's; see `needed_by`)."""
    shape_only = Planner(src, dst, {}, prefix)
    return needed_by(shape_only, shape_only.target_ranks())


def needed_by(planner: Planner, targets: Collection[int]) -> set[int]:
    """MindSpore's rule for the files `targets` are built from: one stage's ranks for a single-stage
    source, otherwise the union of the targets' `rank_list_for_transform`."""
    if planner.by_stage:
        assert planner.src is not None
        first = planner.src.stage * planner.src_stage_devices
        return set(range(first, first + planner.src_stage_devices))
    need: set[int] = set()
    for tr in targets:
        need.update(planner.rank_list(tr) if planner.src is not None else [0])
    return need


def files_to_index(needed: Collection[int], seen: Collection[int]) -> list[int]:
    """The needed files, or every visible one when some needed file is missing (so the error can say
    what exists)."""
    if any(n not in seen for n in needed):
        return sorted(seen)
    return sorted(n for n in needed if n in seen)


def replica_files(planner: Planner, metas: Mapping[int, Sequence[TensorMeta]], needed: Collection[int],
                  visible: Collection[int]) -> list[int]:
    """Source files to index besides the needed ones because the source may be de-duplicated
    (`remove_redundancy`): the other files of the pipeline stage of any needed file that lacks a
    parameter its stage lays out (see `dedup.stage_ranks`). Empty for an ordinary source."""
    src = planner.src
    if src is None:
        return []
    if planner.by_stage:
        stage_layouts = {src.stage: layout_map(src)}
    else:
        stage_layouts = layout_maps_by_stage(src)
    return stage_ranks(needed, metas, stage_layouts, planner.src_stage_devices, visible)


def check_models_match(src: StrategyFile | None, dst: StrategyFile | None,
                       metas: Mapping[int, Sequence[TensorMeta]], prefix: str = "checkpoint_") -> None:
    """The destination must describe the model the source checkpoints hold (MindSpore would silently
    leave unknown parameters out of the targets)."""
    if dst is None:
        return
    have = {m.name for ms in metas.values() for m in ms}
    wanted = list(layout_map(dst))
    absent = [n for n in wanted if n not in have]
    planner = Planner(src, dst, {}, prefix) if src is not None else None
    if planner is not None and planner.by_stage:
        _say_stage(planner, have, wanted)
        return
    if absent and len(absent) == len(wanted):
        raise MpitransError(
            f"the destination strategy and the source checkpoints describe different models: none of its "
            f"{len(wanted)} parameters (e.g. {absent[0]!r}) is in the source checkpoints"
        )
    if absent:
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise MpitransError(
            f"parameter {absent[0]!r}{more} of the destination strategy is in no source checkpoint "
            f"(searched {rank_span(metas)}; MindSpore would silently leave it out of the targets)"
        )
    if src is not None and not set(layout_map(src)) & set(wanted):
        raise MpitransError("the source and destination strategies share no parameter: different models?")


def _say_stage(planner: Planner, have: set[str], wanted: Sequence[str]) -> None:
    """One line on MindSpore's `_part` path, taken whenever the source strategy names a strict subset of
    the destination's parameters: that stage alone becomes `{prefix}x_part{stage}` files.

    For stage k > 0 the file says which stage it is. A stage-0 file looks like a whole-model strategy
    lacking parameters; when the checkpoints do hold parameters the strategy lacks, that is the likelier
    reading, and the line (a warning then) says so."""
    src = planner.src
    assert src is not None
    own = set(layout_map(src))
    elsewhere = [n for n in wanted if n not in own]
    held_anyway = [n for n in elsewhere if n in have]
    first = src.stage * planner.src_stage_devices
    last = first + planner.src_stage_devices - 1
    what = (f"covers pipeline stage {src.stage} only (source ranks {first}-{last}, "
            f"{len(wanted) - len(elsewhere)} of the destination's {len(wanted)} parameters)")
    if held_anyway:
        what = (f"lacks {len(held_anyway)} parameter(s) the checkpoints hold (e.g. {held_anyway[0]!r}), so it "
                f"is read as pipeline stage {src.stage}'s own file: it {what}")
    level = logging.WARNING if src.stage == 0 else logging.INFO
    log.log(level, "the source strategy %s %s: writing rank_x/%sx_part%d files for this stage, as "
            "mindspore.transform_checkpoints does; run once per stage's strategy file, or give the whole "
            "pipeline's strategy (the folder of stage files) to convert every stage at once",
            src.source or "", what, planner.prefix, src.stage)


def plan_targets(planner: Planner, targets: Collection[int], needed: Collection[int], seen: Collection[int],
                 src_checkpoint: str) -> dict[int, TargetPlan]:
    """The plans of `targets`; a target the visible files cannot build is named with what is missing."""
    plans = {}
    for tr in targets:
        try:
            plans[tr] = planner.plan(tr)
        except MissingShardError as exc:
            absent = {g: () for g in needed if g not in seen}
            hint = f"; not visible to any process: {describe_missing(src_checkpoint, absent)}" if absent else ""
            raise MissingShardError(f"target rank {tr}: {exc}{hint}") from None
    return plans


def check_coverage(plans: Mapping[int, TargetPlan], needed: Collection[int], seen: Collection[int],
                   metas: Mapping[int, object], src_checkpoint: str) -> None:
    """Every region must have a candidate file that some process sees."""
    missing: dict[int, set[int]] = defaultdict(set)
    for tr, plan in plans.items():
        for tensor in plan.tensors:
            for region in tensor.regions:
                if not any(g in seen for g in region.candidates):
                    for g in region.candidates or ():
                        missing[g].add(tr)
    for g in needed:
        if g not in seen and g not in metas:
            missing.setdefault(g, set())
    hard = {g: trs for g, trs in missing.items() if trs}
    if hard:
        raise MissingShardError(
            f"source checkpoint(s) visible to no process under {src_checkpoint}: "
            + describe_missing(src_checkpoint, hard)
        )


def check_world_size(world_size: int | None, targets: Collection[int]) -> None:
    """MindFormers' `world_size` (the target slice count) must be what the destination strategy describes."""
    if world_size is not None and world_size != len(targets):
        raise MpitransError(f"--world-size {world_size}: the destination strategy describes {len(targets)} target "
                            f"rank(s); drop --world-size or give the strategy of a {world_size}-device job")
