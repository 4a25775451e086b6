"""`OutTensor.holders` lets each writer work out alone who reads the regions of a box several targets hold
(`job.exchange`), so it must name exactly the targets that want those regions: on random cases (dp/mp/pp,
optimizer sharding, multi-axis, uneven counts, `_part` sources, full targets), every region of a tensor
with known holders is wanted by exactly its holders; and the choices made alone (`assign.Alone`) equal
what one process deciding every region (`assign_readers`) chooses, over random hosts and placements."""

from __future__ import annotations

import random
from collections import defaultdict

from mpitrans.errors import MpitransError
from mpitrans.plan.assign import Alone, assign_readers, region_key
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
        return None  # a case the planner refuses says nothing about holders


def test_holders_are_exactly_the_targets_wanting_each_region():
    known = shared = unknown = 0
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
                if not tensor.holders:
                    unknown += 1
                    continue
                known += 1
                shared += len(tensor.holders) > 1
                assert list(tensor.holders) == sorted(set(tensor.holders)), (seed, tensor.name)
                for region in tensor.regions:
                    assert wanted_by[region_key(tensor.name, region)] == set(tensor.holders), (seed, tensor.name)
    assert known > 1000 and shared > 200 and unknown > 50  # every kind occurs, so the check bites


def _world(rng: random.Random, plans) -> tuple[dict, dict, dict]:
    """Random processes, hosts and disks: who sees which source file, and where each target is written."""
    nprocs = rng.randint(1, 5)
    sources = sorted({g for p in plans for t in p.tensors for r in t.regions for g in r.candidates})
    host_of = {r: rng.randrange(2) for r in range(nprocs)}
    shared_disk = rng.random() < 0.5
    seers, file_ids = {}, {}
    for g in sources:
        procs = [r for r in range(nprocs) if shared_disk or rng.random() < 0.6] or [rng.randrange(nprocs)]
        seers[g] = procs
        file_ids[g] = {r: ("nfs", 1, g) if shared_disk else (host_of[r], 1, g) for r in procs}
    where = {p.rank: rng.randrange(nprocs) for p in plans}
    return seers, file_ids, where


def test_choices_made_alone_equal_the_deciding_process():
    decided = 0
    for seed in SEEDS:
        plans = _plans(seed)
        if plans is None:
            continue
        rng = random.Random(seed)
        seers, file_ids, where = _world(rng, plans)
        table = assign_readers({p.rank: p for p in plans}, where, seers, file_ids)
        alone = Alone(seers, file_ids)
        for plan in plans:
            for ki, tensor in enumerate(plan.tensors):
                if not tensor.holders:
                    continue
                writers = tuple(where[h] for h in tensor.holders)
                for ri, region in enumerate(tensor.regions):
                    choices = alone.choices(region.candidates, writers)
                    if choices is not None:
                        decided += 1
                        assert choices[tensor.holders.index(plan.rank)] == table[(plan.rank, ki, ri)], seed
    assert decided > 1000
