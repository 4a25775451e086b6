"""The planner's shortcuts (arithmetic overlap search, region templates, candidates shared by a holder
class, layout maps cached per stage) change nothing in its plans: on random cases, every target's plan
equals the plan made without them (brute-force overlap, one class per parameter, maps rebuilt per call).
"""

from __future__ import annotations

import random
from unittest import mock

import pytest

from mpitrans.plan import planner as planner_module
from mpitrans.plan.catalog import SourceCatalog
from mpitrans.plan.filters import KEEP_ALL, ParamFilter
from mpitrans.plan.overlap import brute_force_shards
from mpitrans.plan.planner import Planner, rank_list_for_strategies
from mpitrans.strategy.layout_map import src_dst_layout_maps
from tests.plan.cases import shared_lists, sides, source_metas
from tests.support.layouts import random_case


def all_plans(planner: Planner) -> list[object]:
    """Every target's plan, or the error planning it raised."""
    out: list[object] = []
    for tr in planner.target_ranks():
        try:
            out.append(planner.plan(tr))
        except Exception as exc:  # noqa: BLE001 - the same error must come from both
            out.append((type(exc).__name__, str(exc)))
    return out


def plans(src, dst, metas, keep: ParamFilter) -> list[object]:
    try:
        planner = Planner(src, dst, metas, param_filter=keep)
    except Exception as exc:  # noqa: BLE001 - the filters may keep nothing
        return [(type(exc).__name__, str(exc))]
    return all_plans(planner)


def reference_plans(src, dst, metas, keep: ParamFilter) -> list[object]:
    """Plans without the shortcuts."""
    names: dict[str, int] = {}

    def own_class(_self, name: str) -> int:
        return names.setdefault(name, len(names))

    def fresh_maps(self, rank):
        return src_dst_layout_maps(rank, self.src, self.dst)

    with mock.patch.object(planner_module, "overlapping_shards", brute_force_shards), \
            mock.patch.object(SourceCatalog, "holder_class", own_class), \
            mock.patch.object(Planner, "_maps", fresh_maps):
        return plans(src, dst, metas, keep)


@pytest.mark.parametrize("seed", range(200))
def test_plans_equal_plans_without_shortcuts(seed):
    case = random_case(seed)
    src, dst = sides(case)
    metas = source_metas(case)
    rng = random.Random(seed)
    if len(metas) > 2 and rng.random() < 0.3:  # some files missing: the missing-shard paths as well
        metas = {g: m for g, m in metas.items() if rng.random() < 0.7}
    if seed % 2:  # files with equal metadata share one list, as the metadata exchange delivers them
        metas = shared_lists(metas)
    keep = ParamFilter(drop_optimizer_state=True) if seed % 5 == 0 else KEEP_ALL
    assert plans(src, dst, metas, keep) == reference_plans(src, dst, metas, keep)
    planner = Planner(src, dst, metas)
    for tr in planner.target_ranks():
        try:
            expected = rank_list_for_strategies(tr, src, dst)
        except Exception as exc:  # noqa: BLE001
            expected = type(exc).__name__
        if expected != "LayoutError":  # the planner falls back to every source rank then
            assert planner.rank_list(tr) == expected


def test_files_sharing_one_metadata_list_are_indexed_once():
    case = random_case(3)
    src, dst = sides(case)
    metas = source_metas(case)
    first = next(iter(metas.values()))
    shared = {g: first for g in metas}  # every file lists the same tensors: one name index
    planner = Planner(src, dst, shared)
    assert len({id(d) for d in planner.catalog.by_name.values()}) == 1
    assert all_plans(planner) == all_plans(Planner(src, dst, {g: list(m) for g, m in shared.items()}))
    filtered = Planner(src, dst, shared, param_filter=ParamFilter(exclude=("adam_*",)))
    assert len({id(m) for m in filtered.metas.values()}) == 1
