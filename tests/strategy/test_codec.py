"""The strategy codec on its own: file-level errors, writing, and the bytes broadcast between ranks.

Reading MindSpore's own bytes, parse for parse, is in `test_codec_oracle.py`.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from mpitrans.errors import StrategyError
from mpitrans.fixtures.strategies import write_strategy_file
from mpitrans.strategy.codec import (
    decode_strategy,
    encode_strategy,
    read_strategy,
    strategy_from_bytes,
    strategy_to_bytes,
    write_strategy,
)
from mpitrans.strategy.layout_map import layout_map
from mpitrans.strategy.model import RawLayout, StrategyFile
from tests.strategy.samples import CLASSIC, MULTI_AXIS, ld, random_message, tag, varint


def test_multi_axis_entries_are_tuples(tmp_path):
    path = write_strategy_file(tmp_path / "s.ckpt", MULTI_AXIS)
    lmap = layout_map(read_strategy(path))
    assert lmap["w2d"].tensor_map == ((2, 1), (-1,))
    assert lmap["w1d"].tensor_map == ((1, 0),)  # the padding empty message is dropped
    assert lmap["flat"].tensor_map == (1, 0)
    assert lmap["mixed"].tensor_map == ((-1,), (2, 0), (1,))
    assert all(isinstance(e, int) for e in layout_map(read_strategy(
        write_strategy_file(tmp_path / "c.ckpt", CLASSIC)))["dense.weight"].tensor_map)


def test_deeply_nested_groups_are_refused_without_recursion():
    data = tag(20, 3) * 5000 + tag(20, 4) * 5000
    with pytest.raises(StrategyError):
        decode_strategy(data)


def test_missing_empty_directory_and_garbage_files(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(StrategyError, match="nope.ckpt.*does not exist"):
        read_strategy(missing)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(StrategyError, match="empty.ckpt is empty"):
        read_strategy(empty)
    with pytest.raises(StrategyError, match="not a regular file"):
        read_strategy(tmp_path)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(StrategyError, match="garbage.ckpt"):
        read_strategy(garbage)
    no_layouts = tmp_path / "no_layouts.ckpt"
    no_layouts.write_bytes(tag(1, 0) + varint(0) + ld(99, b"xyz"))
    with pytest.raises(StrategyError, match="no_layouts.ckpt holds no parameter layouts"):
        read_strategy(no_layouts)


def test_write_json_refuses_multi_axis_without_leaving_a_file(tmp_path):
    s = read_strategy(write_strategy_file(tmp_path / "s.ckpt", MULTI_AXIS))
    with pytest.raises(StrategyError, match="TensorMap"):
        write_strategy(s, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_values_outside_the_field_types_are_refused():
    bad_layouts = (RawLayout((-1,), ((0,),)), RawLayout((2,), ((1 << 31,),)),
                   RawLayout((2,), ((0,),), field=1.5))
    for bad in bad_layouts:
        with pytest.raises(StrategyError):
            encode_strategy(StrategyFile(layouts=[("w", bad)]))
    # JSON can spell a lone surrogate, which no protobuf string can hold.
    with pytest.raises(StrategyError, match="UTF-8"):
        encode_strategy(StrategyFile(layouts=[("w\ud800", RawLayout((1,), ((0,),)))]))


@pytest.mark.parametrize("seed", range(30))
def test_bytes_round_trip_for_broadcast(seed):
    rng = random.Random(seed)
    s = decode_strategy(random_message(rng, stages=rng.choice([1, 4]), odd=True).SerializeToString(),
                        source=f"/data/stratégie/{seed}.ckpt")
    back = strategy_from_bytes(strategy_to_bytes(s))
    assert back == s and back.source == s.source


def test_bad_broadcast_payloads():
    good = strategy_to_bytes(StrategyFile(layouts=[("w", RawLayout((1,), ((-1,),)))], source="x"))
    for bad in (b"", b"pickle", good[:25], good[:-3]):
        with pytest.raises(StrategyError):
            strategy_from_bytes(bad)


def test_package_never_imports_mindspore_or_protobuf():
    code = ("import sys, mpitrans.strategy.codec, mpitrans.strategy.merge, mpitrans.strategy.layout_map;"
            "bad = [m for m in sys.modules if m.startswith(('mindspore', 'google.protobuf'))];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))))
