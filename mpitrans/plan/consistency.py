"""Checks of the source files against the strategy and against each other, before any byte moves.

The planner trusts the metadata it is given: it infers a parameter's full shape from one shard, takes its
dtype from one file, and reads any replica. A shard of the wrong shape or dtype, a parameter missing from
one file, a file of another model, or a strategy that does not match the checkpoints would otherwise be
found only while bytes move (a traceback, a half-written target) or never (a target of the wrong shape
that MindSpore happily loads). Everything here is a pure function of the gathered metadata (names,
dtypes, shapes per source file) and the strategies, identical on every rank, so the engine runs it inside
an agreement phase and every rank reports the same one-line error naming the rank, file and parameter.

What is refused, and why (MindSpore's `transform_checkpoints` was checked on each):

* A shard whose shape disagrees with what the strategy implies from the other files (smaller, transposed,
  other rank): MindSpore raises for some, writes mixed shapes for others.
* A dtype differing between files (float16 vs bfloat16 included): MindSpore silently mixes them.
* A parameter of the source strategy held by some files of its pipeline stages but not by others, or a
  file holding none of the parameters the others hold (a file of another model): MindSpore raises or
  fails with a KeyError. A strategy parameter that no file holds is fine (checkpoints saved without
  optimizer states, for instance), as are parameters absent from the strategy, which are copied as they
  are - as long as every file a target copies them from holds them.
* Source `rank_x` directories beyond the source strategy's device count whose files hold the same
  parameters as the first ranks': the checkpoints were saved with another (larger) layout; MindSpore
  reads only the first ranks and writes wrong shapes without a word. Beyond the device count of a
  single-stage strategy, files of other pipeline stages (other parameters) are normal and ignored, as
  MindSpore ignores them; a merged (multi-stage) strategy has nothing beyond its device count.
* No strategy at all: there is nothing to reshard (MindSpore refuses this as well).

Files outside the job's source ranks are dropped from the metadata the planner sees, so they can never
be read as a replica.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mpitrans.errors import LayoutError, MpitransError
from mpitrans.metadata import TensorMeta
from mpitrans.plan.catalog import per_list
from mpitrans.plan.dedup import replica_groups
from mpitrans.plan.layout import origin_shape, resolved_opt_shard_size, tensor_strategy
from mpitrans.plan.planner import Planner
from mpitrans.storage.discover import rank_span
from mpitrans.strategy.layout_map import layout_map, layout_maps_by_stage
from mpitrans.strategy.model import ParamLayout, StrategyFile

__all__ = ["InconsistentSourceError", "Scope", "check_sources", "probe_ranks", "source_scope"]


class InconsistentSourceError(MpitransError):
    """Source checkpoint files disagree with the strategy or with each other."""


@dataclass(frozen=True)
class Scope:
    """The source ranks a job reads: `first` .. `first + count - 1`."""

    first: int
    count: int
    stage_devices: int  # source devices per pipeline stage
    stages: int  # pipeline stages the source strategy describes
    by_stage: bool  # one stage's own strategy against a whole-model target (MindSpore's `_part` path)
    copy_locals: frozenset[int]  # local source ranks that parameters absent from the strategy are copied from

    def __contains__(self, rank: object) -> bool:
        return isinstance(rank, int) and self.first <= rank < self.first + self.count


def source_scope(src: StrategyFile | None, dst: StrategyFile | None, prefix: str = "checkpoint_") -> Scope:
    """Which source ranks MindSpore's transform reads for these strategies (all of them, or one stage's)."""
    planner = Planner(src, dst, {}, prefix)
    n = planner.src_stage_devices
    first = src.stage * n if planner.by_stage else 0
    count = n if planner.by_stage else n * planner.src_stages
    # MindSpore copies a parameter absent from the strategy into target local rank l from source local
    # rank l % n (n: source devices per stage).
    copy_locals = frozenset(range(min(planner.dst_stage_devices, n)))
    return Scope(first, count, n, planner.src_stages, planner.by_stage, copy_locals)


def probe_ranks(scope: Scope, visible: Iterable[int]) -> set[int]:
    """Source files to index beyond the needed ones, so `check_sources` can judge the rank directories
    beyond the strategy's device count: the first such rank and the rank it would repeat."""
    if scope.by_stage:
        return set()
    seen = set(visible)
    beyond = sorted(g for g in seen if g not in scope)
    if not beyond:
        return set()
    return {g for g in (beyond[0], beyond[0] % scope.count) if g in seen}


def _who(paths: Mapping[int, str], g: int) -> str:
    return f"rank_{g} ({paths[g]})" if g in paths else f"rank_{g}"


def _strategy_name(strategy: StrategyFile | None) -> str:
    return f"the source strategy {strategy.source}" if strategy is not None and strategy.source else \
        "the source strategy"


def _check_strategies_given(src, dst, visible: Sequence[int], src_checkpoint: str) -> None:
    if src is not None or dst is not None:
        return
    if len(visible) > 1:
        raise InconsistentSourceError(
            f"no source or destination strategy was given, so {src_checkpoint} would be read as one full "
            f"checkpoint (rank_0), but it holds {rank_span(visible)}: give the source strategy they were "
            f"saved with")
    raise InconsistentSourceError(
        f"no source or destination strategy was given: {src_checkpoint} is already one full checkpoint "
        f"and there is nothing to reshard (MindSpore's transform_checkpoints refuses this too); give the "
        f"destination strategy to shard it for, or copy the file")


def _check_device_count(src, scope: Scope, visible: Sequence[int], names: Mapping[int, set[str]],
                        paths: Mapping[int, str], src_checkpoint: str) -> None:
    """Rank directories beyond the source strategy's device count: another layout's shards, or (for a
    single-stage strategy) other pipeline stages' files, told apart by the parameters they hold."""
    if scope.by_stage:
        return
    beyond = sorted(g for g in visible if g not in scope)
    if not beyond:
        return
    last = scope.count - 1
    span = "rank_0" if last == 0 else f"rank_0..rank_{last}"
    if src is None:
        what = f"no source strategy was given, so the source is read as one full checkpoint ({span})"
    elif scope.stages > 1:
        raise InconsistentSourceError(
            f"{_strategy_name(src)} describes {scope.count} devices ({scope.stages} pipeline stages of "
            f"{scope.stage_devices}: {span}), but {src_checkpoint} also holds {rank_span(beyond)}: these "
            f"checkpoints were saved with another strategy (more devices or stages)")
    else:
        what = f"{_strategy_name(src)} describes {scope.count} device(s) ({span})"
    probe, partner = beyond[0], beyond[0] % scope.count
    if probe not in names or partner not in names:
        return
    keep = set(layout_map(src)) if src is not None else None

    def key(g: int) -> set[str]:
        return names[g] & keep if keep is not None else names[g]

    if key(partner) and key(partner) <= key(probe):
        fix = "give the source strategy they were saved with" if src is None else \
            "these checkpoints were saved with another strategy"
        raise InconsistentSourceError(
            f"{what}, but {src_checkpoint} also holds {rank_span(beyond)}, and {_who(paths, probe)} holds the "
            f"same parameters as rank_{partner}: {fix} (MindSpore would read {span} only and write wrong shapes)")


def _majority(values: Mapping[int, object]) -> object:
    """The most common value; a tie goes to the value of the lowest rank among the tied."""
    counts = Counter(values.values())
    top = max(counts.values())
    return next(v for _, v in sorted(values.items()) if counts[v] == top)


def _multipliers(layout: ParamLayout) -> list[int]:
    """Per dimension, how many shards make the full tensor (MindSpore's `origin_shape` factors)."""
    split = tensor_strategy(layout.dev_matrix, layout.tensor_map)
    opt = resolved_opt_shard_size(layout)
    return [s * (opt if i == 0 and opt > 0 else 1) for i, s in enumerate(split)]


def _even(layout: ParamLayout) -> bool:
    """Layouts whose shard shapes follow from the device matrix alone (the planner refuses the others)."""
    return layout.field <= 0 and not any(layout.param_split_shape)


def _fmt(shape: Sequence[int]) -> str:
    return str(tuple(shape))


def check_sources(src: StrategyFile | None, dst: StrategyFile | None, metas: Mapping[int, Sequence[TensorMeta]],
                  paths: Mapping[int, str], visible: Iterable[int], src_checkpoint: str,
                  prefix: str = "checkpoint_") -> dict[int, list[TensorMeta]]:
    """Check the indexed source files (`metas`: source rank -> its tensors) against the strategies and
    against each other; raise InconsistentSourceError naming rank, file and parameter on the first
    problem. `visible`: every source rank some process sees; `paths`: source rank -> file, for messages.

    Returns the metadata of the files inside the job's source ranks (see `source_scope`), the only ones
    the planner may read.
    """
    visible = sorted(set(visible))
    _check_strategies_given(src, dst, visible, src_checkpoint)
    scope = source_scope(src, dst, prefix)
    names = per_list(metas, lambda ms: {m.name for m in ms})
    _check_device_count(src, scope, visible, names, paths, src_checkpoint)
    scoped = per_list({g: ms for g, ms in sorted(metas.items()) if g in scope}, list)
    files = per_list(scoped, lambda ms: {m.name: m for m in ms})
    lmap = layout_map(src) if src is not None else {}
    stage_maps = layout_maps_by_stage(src) if src is not None and not scope.by_stage else {}
    n = scope.stage_devices

    def stage_of(g: int) -> int:
        return 0 if scope.by_stage else g // n

    def layout_for(g: int, name: str) -> ParamLayout | None:
        """The layout file `g`'s shard of `name` was cut by; None when its stage does not hold `name`."""
        if scope.by_stage:
            return lmap.get(name)
        return stage_maps.get(stage_of(g), {}).get(name)

    if _consistent_by_class(lmap, files, scope, stage_of, layout_for, src is not None):
        return scoped
    holders: dict[str, list[int]] = {}
    for g, by_name in files.items():
        for name in by_name:
            holders.setdefault(name, []).append(g)

    _check_presence(lmap, files, holders, paths, scope, stage_of, layout_for)
    _check_dtypes_and_shapes(lmap, files, holders, paths, layout_for)
    if src is not None:
        _check_copied(lmap, files, holders, paths, scope)
    return scoped


def _consistent_by_class(lmap, files, scope: Scope, stage_of, layout_for, copies: bool) -> bool:
    """True when none of the checks below can fail, judged once per class of files (one name index, one
    pipeline stage) instead of once per file; False sends the sources through the checks themselves,
    which name the first problem exactly."""
    classes: dict[tuple[int, int], tuple[int, dict[str, TensorMeta]]] = {}  # -> (a rank of it, its index)
    by_local: dict[int, dict[int, dict[str, TensorMeta]]] = defaultdict(dict)
    for g, by_name in files.items():
        classes.setdefault((id(by_name), stage_of(g)), (g, by_name))
        by_local[g % scope.stage_devices][id(by_name)] = by_name
    held = set().union(*(by_name for _, by_name in classes.values()))
    for name, layout in lmap.items():
        if name in held and any(name not in by_name and (scope.by_stage or stage in layout.stages)
                                for (_, stage), (_, by_name) in classes.items()):
            return False
    for name in held:
        dtypes, implied = set(), set()
        for g, by_name in classes.values():
            meta = by_name.get(name)
            if meta is None:
                continue
            dtypes.add(meta.dtype)
            layout = layout_for(g, name) if name in lmap else None
            if name not in lmap:
                implied.add(meta.shape)
            elif layout is not None and _even(layout):
                if len(meta.shape) != len(layout.tensor_map):
                    return False
                implied.add(origin_shape(meta.shape, layout))
        if len(dtypes) > 1 or len(implied) > 1:
            return False
    copied = [name for name in held if name not in lmap] if copies else []
    return all(not by_local.get(local) or any(name in d for d in by_local[local].values())
               for name in copied for local in scope.copy_locals)


def _held_by_replica(name: str, g: int, files, have: list[int], scope: Scope, stage_of, layout_for) -> bool:
    """Whether a file of `g`'s stage holds the slice of `name` that `g` would (a de-duplicated source,
    saved with `remove_redundancy`: one replica of each slice keeps it), or may: a replica not indexed."""
    layout = layout_for(g, name)
    if layout is None or not _even(layout):
        return False
    n = scope.stage_devices
    twins = [h for h in have if stage_of(h) == stage_of(g)]
    if not twins:
        return False
    shape = files[twins[0]][name].shape
    if len(shape) != len(layout.tensor_map):
        return False  # reported by the shape checks
    try:
        groups = replica_groups(layout, tuple(shape))
    except LayoutError:
        return False
    mine = groups[g % n % len(groups)]
    if any(groups[h % n % len(groups)] == mine for h in twins):
        return True
    # A replica whose file nobody indexed (absent on every host) may hold it: the coverage check names it.
    base = g - g % n
    return any(group == mine and base + r not in files for r, group in enumerate(groups))


def _check_presence(lmap, files, holders, paths, scope: Scope, stage_of, layout_for) -> None:
    """A strategy parameter some file of its stages holds must be in every indexed file of those stages,
    or (a de-duplicated source) in a file of a replica holding the same slice."""
    missing: dict[int, list[str]] = {}
    foreign = {g for g, by_name in files.items() if any(len(holders[n]) == 1 for n in by_name)
               and not any(n in lmap for n in by_name)}  # a file of another model, not a replica's subset
    for name, layout in lmap.items():
        have = holders.get(name)
        if not have:
            continue
        for g in files:
            if name not in files[g] and (scope.by_stage or stage_of(g) in layout.stages) and (
                    g in foreign or not _held_by_replica(name, g, files, have, scope, stage_of, layout_for)):
                missing.setdefault(g, []).append(name)
    if not missing:
        return
    g = min(missing)
    shared = [n for n in files[g] if n in lmap and holders.get(n)]
    if not shared:
        others = sorted({h for n in missing[g] for h in holders[n]})
        raise InconsistentSourceError(
            f"{_who(paths, g)} holds none of the source strategy's parameters that {rank_span(others)} hold "
            f"(e.g. {missing[g][0]!r}): is it a checkpoint of another model?")
    name = missing[g][0]
    more = f" (and {len(missing[g]) - 1} more)" if len(missing[g]) > 1 else ""
    raise InconsistentSourceError(
        f"{_who(paths, g)}: parameter {name!r}{more} is missing, but {_who(paths, holders[name][0])} holds it "
        f"and the source strategy puts it in both files; no other file holding the same slice has it either "
        f"(searched {rank_span(files)})")


def _check_dtypes_and_shapes(lmap, files, holders, paths, layout_for) -> None:
    """One dtype per parameter across all files; shard shapes that imply one full shape (strategy
    parameters) or, for parameters absent from the strategy, one shape."""
    ref_dtype: dict[str, str] = {}
    ref_shape: dict[str, tuple[int, ...]] = {}
    for name, gs in holders.items():
        ref_dtype[name] = _majority({g: files[g][name].dtype for g in gs})
        implied: dict[int, tuple[int, ...]] = {}
        for g in gs:
            shape = files[g][name].shape
            if name in lmap:
                layout = layout_for(g, name)
                if layout is None or not _even(layout) or len(shape) != len(layout.tensor_map):
                    continue
                implied[g] = origin_shape(shape, layout)
            else:
                implied[g] = shape
        if implied:
            ref_shape[name] = _majority(implied)
    for g, by_name in files.items():
        for name, meta in by_name.items():
            if meta.dtype != ref_dtype[name]:
                ref = next(h for h in holders[name] if files[h][name].dtype == ref_dtype[name])
                raise InconsistentSourceError(
                    f"{_who(paths, g)}: parameter {name!r} has dtype {meta.dtype}; {_who(paths, ref)} and the "
                    f"other copies hold {ref_dtype[name]}")
            if name not in ref_shape:
                continue
            if name not in lmap:
                if meta.shape != ref_shape[name]:
                    raise InconsistentSourceError(
                        f"{_who(paths, g)}: parameter {name!r} has shape {_fmt(meta.shape)}; the other source "
                        f"files hold {_fmt(ref_shape[name])}")
                continue
            layout = layout_for(g, name)
            if layout is None or not _even(layout):
                continue
            if len(meta.shape) != len(layout.tensor_map):
                raise InconsistentSourceError(
                    f"{_who(paths, g)}: parameter {name!r} has shape {_fmt(meta.shape)}; the strategy's tensor "
                    f"map {list(layout.tensor_map)} gives it {len(layout.tensor_map)} dimension(s)")
            full = ref_shape[name]
            if origin_shape(meta.shape, layout) != full:
                mult = _multipliers(layout)
                if len(full) == len(mult) and all(f % m == 0 for f, m in zip(full, mult, strict=True)):
                    want = _fmt(f // m for f, m in zip(full, mult, strict=True))
                    raise InconsistentSourceError(
                        f"{_who(paths, g)}: parameter {name!r} has shape {_fmt(meta.shape)}; the strategy "
                        f"implies {want} (full shape {_fmt(full)})")
                raise InconsistentSourceError(
                    f"{_who(paths, g)}: parameter {name!r} has shape {_fmt(meta.shape)}, which the strategy "
                    f"cannot cut from the full shape {_fmt(full)} the other files imply")


def _check_copied(lmap, files, holders, paths, scope: Scope) -> None:
    """Parameters absent from the source strategy are copied as they are from source local rank
    `l % n` into target local rank l: every such file that was indexed must hold them."""
    n = scope.stage_devices
    for name, gs in holders.items():
        if name in lmap:
            continue
        for local in sorted(scope.copy_locals):
            group = [g for g in files if g % n == local]
            if group and not any(name in files[g] for g in group):
                raise InconsistentSourceError(
                    f"{_who(paths, group[0])}: parameter {name!r} is missing, but {_who(paths, gs[0])} holds it; "
                    f"a parameter absent from the source strategy is copied from each target's own source "
                    f"rank, so every such file must hold it")
