"""`plan.dedup`: the merged parameter order of a de-duplicated stage, and which ranks are replicas.

`replica_groups` is checked against MindSpore's own `get_parameter_redundancy` (the rule
`remove_redundancy` saving is built on) on generated training layouts; `merged_order` against the order it
must recover: a network order, cut into per-rank subsequences the way `remove_param_redundancy` cuts it.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpitrans.fixtures.random_layouts import random_layout
from mpitrans.fixtures.strategies import write_strategy_file
from mpitrans.metadata import TensorMeta
from mpitrans.plan.catalog import LoadOrder, SourceCatalog
from mpitrans.plan.dedup import incomplete_stages, merged_order, replica_groups, stage_ranks


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 30), st.integers(1, 6), st.randoms(use_true_random=False))
def test_merged_order_keeps_every_list_and_recovers_a_fully_witnessed_order(n, parts, rng):
    order = [f"p{i}" for i in range(n)]
    # Each file keeps a random subset of the names, in order, plus the extras every file keeps.
    extras = ["global_step"]
    lists = [[x for x in order if rng.random() < 0.5] + extras for _ in range(parts)]
    merged = merged_order(lists, key=lambda x: rng.random())  # any tie-break keeps every file's order
    names = {x for lst in lists for x in lst}
    assert sorted(merged) == sorted(names)
    for lst in lists:
        assert [x for x in merged if x in lst] == lst
    # The tie-break is the true order: the true order comes back, whatever the files witnessed.
    rank = {x: i for i, x in enumerate(order + extras)}
    assert merged_order(lists, rank.__getitem__) == [x for x in order + extras if x in names]


def test_merged_order_ties_follow_the_key_and_contradictions_end():
    assert merged_order([["a", "c"], ["b", "d"]], {"a": 0, "b": 1, "c": 2, "d": 3}.__getitem__) == ["a", "b", "c", "d"]
    assert merged_order([["a", "c"], ["b", "d"]], {"a": 3, "b": 2, "c": 1, "d": 0}.__getitem__) == ["b", "d", "a", "c"]
    # A file says a < b, another b < a (files of different networks): every name still comes out once.
    out = merged_order([["a", "b"], ["b", "a"], ["c"]], {"a": 0, "b": 1, "c": 2}.__getitem__)
    assert sorted(out) == ["a", "b", "c"]


def _partition(groups) -> set[frozenset[int]]:
    by: dict[int, set[int]] = {}
    for rank, g in enumerate(groups):
        by.setdefault(g, set()).add(rank)
    return {frozenset(v) for v in by.values()}


@pytest.mark.parametrize("seed", range(40))
def test_replica_groups_are_mindsporess_redundancy_groups(tmp_path, seed):
    pytest.importorskip("mindspore")
    from mindspore.train._utils import get_parameter_redundancy

    rng = random.Random(seed)
    devices = rng.choice((2, 4, 6, 8))
    shape = (rng.choice((8, 16, 24)), rng.choice((8, 12)))
    layout = random_layout(rng, profile="training", shape=shape, devices=devices, multi_axis=False,
                           opt_shard=rng.choice((None, 2)))
    path = write_strategy_file(tmp_path / "s.ckpt", {"w": layout.to_strategy_spec()})
    theirs = {frozenset(g) for g in get_parameter_redundancy(str(path), initial_rank=0)["w"]}
    if not theirs:
        pytest.skip("MindSpore's reader finds no group for this optimizer sharding")
    strategy = layout.strategy
    opt = layout.resolved_opt_size() if layout.opt_shard_size else 1
    shard = tuple(s // k // (opt if i == 0 else 1) for i, (s, k) in enumerate(zip(shape, strategy, strict=True)))
    assert _partition(replica_groups(layout.to_param_layout(), shard)) == theirs, layout


def _catalog(metas, sd, order=("a", "b", "c")):
    return SourceCatalog(metas, sd, {(0, n): () for n in order})


def test_catalog_lists_deduplicated_files_as_their_stage_merge():
    t = {n: TensorMeta(n, "float32", (2,)) for n in ("a", "b", "c", "step")}
    kept_a = [t["a"], t["c"], t["step"]]
    kept_b = [t["b"], t["step"]]
    metas = {0: kept_a, 1: kept_a, 2: kept_b, 3: kept_b}  # dp2 x mp2: ranks 0/2 and 1/3 are replicas
    assert incomplete_stages(metas, 4) == {0}
    cat = _catalog(metas, 4)
    assert cat.listing[0] == cat.listing[3] == ["a", "b", "c", "step"]
    loaded = LoadOrder(cat, [1, 0])
    assert list(loaded.first_seen([1, 0])) == ["a", "b", "c", "step"]
    assert loaded.chosen("b", 0) == 0  # the file MindSpore would take b from, had rank 0 kept it
    assert cat.candidates("b", 2, 0) == (2,)  # ... its replica, which did
    assert cat.meta("b", 0) is t["b"]
    # An ordinary source keeps its own lists.
    full = [t["a"], t["b"], t["c"], t["step"]]
    assert _catalog({0: full, 1: full}, 2).listing[0] == ["a", "b", "c", "step"]
    assert incomplete_stages({0: full, 1: full}, 2) == set()


def test_stage_ranks_only_for_stages_with_a_file_lacking_a_laid_out_parameter():
    a, b = TensorMeta("a", "float32", (2,)), TensorMeta("b", "float32", (2,))
    layouts = {0: {"a": None, "b": None}, 1: {"a": None, "b": None}}
    metas = {0: [a], 4: [a, b]}
    assert stage_ranks([0, 4], metas, layouts, 4, range(8)) == [1, 2, 3]
    assert stage_ranks([4], metas, layouts, 4, range(8)) == []
