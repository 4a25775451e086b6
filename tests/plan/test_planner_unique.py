"""`OutTensor.unique` lets a writer choose readers without asking anyone (`job.exchange`), so it must never
claim a tensor box that another target also holds: on random cases (dp/mp/pp, optimizer sharding,
multi-axis, uneven counts, `_part` sources, full targets), every region of a tensor marked unique is
wanted by exactly one target, and the flag is set often enough to matter."""

from __future__ import annotations

from collections import defaultdict

import pytest

from mpitrans.errors import MpitransError
from mpitrans.plan.assign import region_key
from mpitrans.plan.planner import Planner
from tests.plan.cases import shared_lists, sides, source_metas
from tests.support.layouts import random_case

SEEDS = range(200)


def _plans(seed: int):
    case = random_case(seed)
    src, dst = sides(case)
    try:
        planner = Planner(src, dst, shared_lists(source_metas(case)))
        return [planner.plan(r) for r in planner.target_ranks()]
    except MpitransError:
        return None  # a case the planner refuses says nothing about the flag


def test_unique_tensors_have_one_wanting_target():
    marked = unmarked = 0
    for seed in SEEDS:
        plans = _plans(seed)
        if plans is None:
            continue
        wanted_by: dict[tuple, set[int]] = defaultdict(set)
        for plan in plans:
            for tensor in plan.tensors:
                for region in tensor.regions:
                    wanted_by[region_key(tensor.name, region)].add(plan.rank)
        for plan in plans:
            for tensor in plan.tensors:
                if not tensor.unique:
                    unmarked += 1
                    continue
                marked += 1
                for region in tensor.regions:
                    assert wanted_by[region_key(tensor.name, region)] == {plan.rank}, (seed, tensor.name)
    assert marked > 100 and unmarked > 100  # both kinds occur, so the check above bites


@pytest.mark.parametrize("seed", [s for s in SEEDS if s % 20 == 0])
def test_replicated_target_boxes_are_not_unique(seed):
    plans = _plans(seed)
    if plans is None:
        pytest.skip("case refused")
    boxes: dict[tuple, int] = defaultdict(int)
    for plan in plans:
        for tensor in plan.tensors:
            boxes[(tensor.name, tuple(r.dst_box for r in tensor.regions),
                   tuple(r.src_box for r in tensor.regions), tuple(r.candidates for r in tensor.regions))] += 1
    for plan in plans:
        for tensor in plan.tensors:
            key = (tensor.name, tuple(r.dst_box for r in tensor.regions), tuple(r.src_box for r in tensor.regions),
                   tuple(r.candidates for r in tensor.regions))
            if boxes[key] > 1:
                assert not tensor.unique, (seed, tensor.name)
