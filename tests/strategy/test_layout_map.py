"""Derived layout views on their own: stage counts and fresh maps.

Agreement with MindSpore's private helpers, on hand-picked and random strategies, is in
`test_layout_map_oracle.py`.
"""

from __future__ import annotations

import random

import pytest

from mpitrans.errors import StrategyError
from mpitrans.fixtures.strategies import strategy_message
from mpitrans.strategy.codec import decode_strategy
from mpitrans.strategy.layout_map import layout_map, pipeline_stage_num, src_dst_layout_maps
from tests.strategy.samples import random_message, write_message


def test_src_dst_maps_are_fresh_dicts(tmp_path):
    _, s = write_message(tmp_path, random_message(random.Random(1), stages=2))
    a, _ = src_dst_layout_maps(0, s, s)
    a.clear()
    assert layout_map(s)


def test_stage_counts():
    spec = {"dev_matrix": (2,), "tensor_map": (0,)}
    assert pipeline_stage_num(None) == 1
    for names, expected in [(["w"], 1), (["0-w", "1-w", "1-v"], 2), (["1-w", "0-v", "3-u", "2-t"], 4)]:
        s = read_strategy_from(dict.fromkeys(names, spec))
        assert pipeline_stage_num(s) == expected
    with pytest.raises(StrategyError, match="does not contain all stages"):
        pipeline_stage_num(read_strategy_from({"1-w": spec, "2-v": spec}))


def read_strategy_from(params):
    return decode_strategy(strategy_message(params).SerializeToString())
