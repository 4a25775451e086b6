"""Pipeline-stage merging against `mindspore.merge_pipeline_strategys`: same bytes, same layouts."""

from __future__ import annotations

import json
import random

import pytest

from mpitrans.errors import StrategyError
from mpitrans.fixtures.strategies import write_pipeline_stage_files, write_strategy_file
from mpitrans.strategy.codec import encode_strategy, read_strategy
from mpitrans.strategy.layout_map import layout_map, pipeline_stage_num
from mpitrans.strategy.merge import (
    load_strategy,
    merge_pipeline_strategys,
    merge_stage_files,
)
from tests.strategy.oracle import ms_map, ms_merge, our_content, our_map, ps
from tests.strategy.samples import random_params, snapshot, spec, stage_params


@pytest.mark.parametrize("stages", [2, 4])
@pytest.mark.parametrize("all_ranks", [False, True])
def test_protobuf_merge_is_byte_identical(tmp_path, stages, all_ranks):
    src = tmp_path / "strategy"
    write_pipeline_stage_files(src, stage_params(stages), all_ranks=all_ranks)
    ms_out, our_out = str(tmp_path / "ms" / "merged.ckpt"), str(tmp_path / "ours" / "merged.ckpt")
    ms_merge(str(src), ms_out)
    before = snapshot(src)
    merge_pipeline_strategys(str(src), our_out)
    assert open(our_out, "rb").read() == open(ms_out, "rb").read()
    loaded = load_strategy(src)
    assert snapshot(src) == before
    assert encode_strategy(loaded) == open(ms_out, "rb").read()
    assert loaded.current_stage == 1 and pipeline_stage_num(loaded) == stages
    for rank in (None, 0, 3, 4, 7, 8, 15):
        assert our_map(layout_map(loaded, rank)) == ms_map(ps._convert_to_list(
            ps._build_searched_strategy(ms_out), rank))


@pytest.mark.parametrize("seed", range(25))
def test_random_stage_files_in_any_order(tmp_path, seed):
    rng = random.Random(seed)
    stages = rng.choice([2, 3, 4])
    per_stage = []
    shared = random_params(rng, 2, prefix="shared")
    for s in range(stages):
        params = random_params(rng, rng.randint(1, 4), prefix=f"s{s}_")
        if rng.random() < 0.6:
            params.update(dict(rng.sample(sorted(shared.items()), rng.randint(1, 2))))
        per_stage.append(params)
    paths = write_pipeline_stage_files(tmp_path / "src", per_stage, stage_device_num=4)
    # Extra inputs MindSpore must cope with: a byte-identical copy and a different file for a merged stage.
    dup = tmp_path / "src" / "copy.ckpt"
    dup.write_bytes(open(paths[0], "rb").read())
    other = write_strategy_file(tmp_path / "src" / "other.ckpt", random_params(rng, 2, prefix="late"),
                                stage=stages - 1)
    order = [*paths, str(dup), other]
    rng.shuffle(order)
    ms_out = str(tmp_path / "ms.ckpt")
    ps._merge_protobuf_strategy(order, ms_out)
    merged = merge_stage_files(order)
    assert encode_strategy(merged) == open(ms_out, "rb").read()
    assert our_content(merged) == our_content(read_strategy(ms_out))
    for rank in (None, 0, 4, 5, 9, 12):
        try:
            expected = ms_map(ps._convert_to_list(ps._build_searched_strategy(ms_out), rank))
        except ValueError:
            with pytest.raises(StrategyError):
                layout_map(merged, rank)
            continue
        assert our_map(layout_map(merged, rank)) == expected


def test_directory_order_is_mindspores(tmp_path):
    src = tmp_path / "src"
    write_pipeline_stage_files(src, stage_params(3))
    # Two different files for stage 1: the one the directory lists first wins, in both tools.
    write_strategy_file(src / "ckpt_strategy_rank_5.ckpt", {"other": spec((2,), (0,))}, stage=1)
    ms_out = str(tmp_path / "ms.ckpt")
    ms_merge(str(src), ms_out)
    assert encode_strategy(load_strategy(src)) == open(ms_out, "rb").read()


def test_json_stage_files(tmp_path):
    src = tmp_path / "json"
    classic = [{n: p for n, p in params.items() if "multi" not in n} for params in stage_params(4)]
    write_pipeline_stage_files(src, classic, fmt="json", all_ranks=True)
    ms_out, our_out = str(tmp_path / "ms.json"), str(tmp_path / "ours.json")
    ms_merge(str(src), ms_out)
    merge_pipeline_strategys(str(src), our_out)
    ms_doc, our_doc = json.load(open(ms_out)), json.load(open(our_out))
    assert our_doc["current_stage"] == ms_doc["current_stage"] == 1
    assert our_doc["parallel_strategy_item"] == ms_doc["parallel_strategy_item"]
    assert list(our_doc["parallel_strategy_item"]) == list(ms_doc["parallel_strategy_item"])
    assert list(our_doc["parallel_layout_item"]) == list(ms_doc["parallel_layout_item"])
    loaded = load_strategy(src)
    for rank in (None, 0, 4, 12):
        expected = ms_map(ps._convert_to_list(ps._build_searched_strategy(ms_out), rank))
        assert our_map(layout_map(read_strategy(our_out), rank)) == expected
        assert our_map(layout_map(loaded, rank)) == expected


def test_json_strategy_items_with_one_node_name_behave_like_a_dict(tmp_path):
    src = tmp_path / "json"
    src.mkdir()
    for s in range(2):
        write_strategy_file(src / f"ckpt_strategy_rank_{s}.json", {f"w{s}": spec((2,), (0,))}, stage=s,
                            fmt="json", strategy_items=[("shared/op", s, [[2]]), (f"own{s}", s, [[1]])])
    ms_out = str(tmp_path / "ms.json")
    ms_merge(str(src), ms_out)
    expected = json.load(open(ms_out))["parallel_strategy_item"]
    got = load_strategy(src).strategy_items
    assert [(n, st, [list(d) for d in dims]) for n, st, dims in got] == [
        (n, v["stage"], v["parallel_strategy"]) for n, v in expected.items()]


def test_protobuf_sources_into_a_json_destination(tmp_path):
    src = tmp_path / "src"
    classic = [{n: p for n, p in params.items() if "multi" not in n} for params in stage_params(2)]
    write_pipeline_stage_files(src, classic)
    out = str(tmp_path / "deep" / "er" / "merged.json")
    merge_pipeline_strategys(str(src), out)
    ms_out = str(tmp_path / "ms.ckpt")
    ms_merge(str(src), ms_out)
    for rank in (None, 0, 4):
        assert ms_map(ps._convert_to_list(ps._build_searched_strategy(out), rank)) == ms_map(
            ps._convert_to_list(ps._build_searched_strategy(ms_out), rank))


def test_errors(tmp_path):
    with pytest.raises(StrategyError, match="not a directory"):
        merge_pipeline_strategys(str(tmp_path / "missing"), str(tmp_path / "out.ckpt"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StrategyError, match="holds no"):
        load_strategy(empty)
    mixed = tmp_path / "mixed"
    write_pipeline_stage_files(mixed, stage_params(2))
    write_strategy_file(mixed / "x.json", {"w": spec((2,), (0,))}, fmt="json")
    with pytest.raises(ValueError):
        ms_merge(str(mixed), str(tmp_path / "ms.ckpt"))
    with pytest.raises(StrategyError, match="mixes"):
        load_strategy(mixed)
    no_items = tmp_path / "no_items"
    write_pipeline_stage_files(no_items, stage_params(2))
    write_strategy_file(no_items / "ckpt_strategy_rank_9.ckpt", {"w": spec((2,), (0,))}, strategy_items=[])
    with pytest.raises(ValueError):
        ms_merge(str(no_items), str(tmp_path / "ms.ckpt"))
    with pytest.raises(StrategyError, match="ckpt_strategy_rank_9.ckpt"):
        load_strategy(no_items)
    garbage = tmp_path / "garbage"
    write_pipeline_stage_files(garbage, stage_params(2))
    (garbage / "bad.ckpt").write_bytes(b"\x0a\xff\xff")
    with pytest.raises(StrategyError, match="bad.ckpt"):
        load_strategy(garbage)
    with pytest.raises(StrategyError):
        merge_stage_files([])
