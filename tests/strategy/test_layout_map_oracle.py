"""Derived layout views against MindSpore's private helpers, on hand-picked and seeded random strategies."""

from __future__ import annotations

import random
import warnings

import pytest

from mpitrans.errors import StrategyError
from mpitrans.fixtures.strategies import strategy_message, write_strategy_file
from mpitrans.strategy.codec import read_strategy
from mpitrans.strategy.layout_map import layout_map, pipeline_stage_num, src_dst_layout_maps
from tests.strategy.oracle import ms_map, our_map, pb, ps
from tests.strategy.samples import random_message, write_message


def same_outcome(ms_call, our_call):
    """Run MindSpore's and our version; both must fail (ours with StrategyError) or both return.

    Returns (mindspore result, our result), or None when both failed.
    """
    try:
        with warnings.catch_warnings():
            # numpy's divide-by-zero warning for a 0 in a device matrix
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = ms_call()
    except Exception:
        with pytest.raises(StrategyError):
            our_call()
        return None
    return expected, our_call()


def check_layout_map(path, ours, rank):
    r = same_outcome(lambda: ps._convert_to_list(ps._build_searched_strategy(path), rank),
                     lambda: layout_map(ours, rank))
    if r is not None:
        assert our_map(r[1]) == ms_map(r[0]), rank


@pytest.mark.parametrize("seed", range(120))
def test_random_layout_maps(tmp_path, seed):
    rng = random.Random(seed)
    stages = rng.choice([1, 2, 4])
    path, ours = write_message(tmp_path, random_message(rng, stages=stages, odd=seed % 4 == 0))
    for rank in [None, 0, 1, 3, 4, 7, 8, 15, 16, 31, 63, 64, 100]:
        check_layout_map(path, ours, rank)


@pytest.mark.parametrize("seed", range(60))
def test_random_pipeline_stage_num(tmp_path, seed):
    rng = random.Random(seed)
    msg = random_message(rng, stages=rng.choice([1, 2, 3, 4]))
    if seed % 3 == 0:  # drop one stage completely: MindSpore complains that stages are missing
        victim = f"{rng.randrange(4)}-"
        keep = [i for i in msg.parallel_layout_item if not i.param_name.startswith(victim)] or \
            [msg.parallel_layout_item[0]]
        kept = [pb.ParallelLayoutItem() for _ in keep]
        for k, i in zip(kept, keep, strict=True):
            k.CopyFrom(i)
        del msg.parallel_layout_item[:]
        msg.parallel_layout_item.extend(kept)
    path, ours = write_message(tmp_path, msg)
    r = same_outcome(lambda: ps._extract_pipeline_stage_num(path), lambda: pipeline_stage_num(ours))
    if r is not None:
        assert r[0] == r[1]


@pytest.mark.parametrize("seed", range(60))
def test_random_src_dst_cut(tmp_path, seed):
    rng = random.Random(seed)
    src_path, src = write_message(tmp_path, random_message(rng, stages=rng.choice([1, 2])), "src.ckpt")
    dst_path, dst = write_message(tmp_path, random_message(rng, stages=rng.choice([1, 2, 4])), "dst.ckpt")
    choices = [(src_path, src, dst_path, dst), (src_path, src, None, None), (None, None, dst_path, dst)]
    for rank in (0, 1, 2, 5, 8, 9, 17, 40):
        sp, s, dp, d = rng.choice(choices)
        r = same_outcome(lambda: ps._extract_src_dst_layout_map(rank, sp, dp),  # noqa: B023
                         lambda: src_dst_layout_maps(rank, s, d))  # noqa: B023
        if r is None:
            continue
        (ms_src, ms_dst), (our_src, our_dst) = r
        assert (ms_src is None) == (our_src is None) and (ms_dst is None) == (our_dst is None)
        if ms_src is not None:
            assert our_map(our_src) == ms_map(ms_src)
        if ms_dst is not None:
            assert our_map(our_dst) == ms_map(ms_dst)


def test_shared_parameter_choice(tmp_path):
    """A tied embedding in stages 0 and 3 of four: MindSpore's rank-dependent pick, spelled out."""
    def spec(dev):
        return {"dev_matrix": dev, "tensor_map": (1, -1)}
    params = {"0-embedding": spec((2, 2)), "1-layer1": spec((2, 2)), "2-layer2": spec((2, 2)),
              "3-embedding": spec((4, 1)), "3-head": spec((2, 2))}
    path, ours = write_message(tmp_path, strategy_message(params))
    for rank in [None, *range(16)]:
        check_layout_map(path, ours, rank)
    assert layout_map(ours)["embedding"].dev_matrix == (2, 2)  # lowest stage without a rank
    assert layout_map(ours)["embedding"].stages == (0, 3)
    assert layout_map(ours, 1)["embedding"].dev_matrix == (2, 2)  # a rank of stage 0
    assert layout_map(ours, 9)["embedding"].dev_matrix == (4, 1)  # any other rank: the stage>0 copy
    # Order of appearance, not the rank's own stage, decides between two non-zero stages.
    swapped = {"2-w": spec((2, 2)), "1-w": spec((4, 1))}
    path, ours = write_message(tmp_path, strategy_message(swapped), "swapped.ckpt")
    for rank in [None, *range(16)]:
        check_layout_map(path, ours, rank)
    assert layout_map(ours, 4)["w"].dev_matrix == (4, 1)
    assert layout_map(ours, 8)["w"].dev_matrix == (4, 1)
    assert layout_map(ours)["w"].stages == (2, 1)


@pytest.mark.parametrize("name", ["a-b-c", "x-w", " 1-w", "+1-w", "1_0-w", "-w", "1-", "٣-w", "w"])
def test_stage_prefix_parsing(tmp_path, name):
    params = {name: {"dev_matrix": (2,), "tensor_map": (0,)},
              "1-w": {"dev_matrix": (2,), "tensor_map": (-1,)}}
    path, ours = write_message(tmp_path, strategy_message(params))
    for rank in (None, 0, 3):
        check_layout_map(path, ours, rank)


def test_odd_layout_messages(tmp_path):
    cases = {
        "no-split-shape": lambda lay: lay.param_split_shape.pop(),
        "no-dev-matrix": lambda lay: lay.dev_matrix.pop(),
        "no-tensor-map": lambda lay: lay.tensor_map.pop(),
        "two-dev-matrices": lambda lay: lay.dev_matrix.add().dim.extend([9]),
        "empty-extra-tensor-map": lambda lay: lay.tensor_map.add(),
        "zero-device": lambda lay: lay.dev_matrix[0].dim.__setitem__(0, 0),
    }
    for label, change in cases.items():
        msg = strategy_message({"0-w": {"dev_matrix": (2, 2), "tensor_map": (1, 0)},
                                "1-w": {"dev_matrix": (2, 2), "tensor_map": (0, 1)}})
        change(msg.parallel_layout_item[1].parallel_layouts)
        path, ours = write_message(tmp_path, msg, f"{label}.ckpt")
        for rank in (None, 0, 3, 4, 7):
            check_layout_map(path, ours, rank)


def test_duplicate_names_keep_first_position_last_value(tmp_path):
    msg = strategy_message({"a": {"dev_matrix": (2,), "tensor_map": (0,)},
                            "b": {"dev_matrix": (4,), "tensor_map": (0,)}})
    extra = msg.parallel_layout_item.add()
    extra.CopyFrom(msg.parallel_layout_item[0])
    extra.parallel_layouts.dev_matrix[0].dim[0] = 8
    path, ours = write_message(tmp_path, msg)
    check_layout_map(path, ours, None)
    assert list(layout_map(ours)) == ["a", "b"] and layout_map(ours)["a"].dev_matrix == (8,)


def test_json_strategies_map_like_mindspore(tmp_path):
    params = {"0-w": {"dev_matrix": (2, 2), "tensor_map": (1, 0)},
              "1-w": {"dev_matrix": (4,), "tensor_map": (0, -1)}}
    path = str(write_strategy_file(tmp_path / "s.json", params, fmt="json"))
    ours = read_strategy(path)
    for rank in (None, 0, 4):
        check_layout_map(path, ours, rank)
