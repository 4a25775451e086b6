"""MindSpore as the reference for the strategy tests: its parse, its layout lists, random strategies.

Everything here may import mindspore; the code under test never does.
"""

from __future__ import annotations

import random

import pytest

ms = pytest.importorskip("mindspore")
from mindspore.parallel import _parallel_serialization as ps  # noqa: E402
from mindspore.parallel.checkpoint_transform import merge_pipeline_strategys as ms_merge  # noqa: E402
from mindspore.train import node_strategy_pb2 as pb  # noqa: E402

from mpitrans.strategy.model import ParamLayout, StrategyFile  # noqa: E402
from tests.support.strategies import fill_layout, strategy_message  # noqa: E402

__all__ = ["pb", "ps", "ms_merge", "ms_content", "our_content", "ms_map", "our_map", "random_spec",
           "random_message", "random_params"]


def ms_content(msg: pb.ParallelStrategyMap) -> tuple:
    """Everything a parsed `ParallelStrategyMap` holds, as plain tuples."""
    layouts = []
    for item in msg.parallel_layout_item:
        lay = item.parallel_layouts
        layouts.append((
            item.param_name,
            tuple(tuple(m.dim) for m in lay.dev_matrix),
            tuple(tuple(m.dim) for m in lay.tensor_map),
            tuple(tuple(m.dim) for m in lay.param_split_shape),
            tuple(tuple(m.dim) for m in lay.indices_offset),
            lay.field, lay.opt_weight_shard_step, lay.opt_weight_shard_size,
        ))
    items = [(i.node_name, i.parallel_strategys.stage,
              tuple(tuple(s.dim) for s in i.parallel_strategys.parallel_strategy))
             for i in msg.parallel_strategy_item]
    return msg.current_stage, items, layouts


def our_content(s: StrategyFile) -> tuple:
    """The same view of one of our StrategyFiles."""
    layouts = [(name, lay.dev_matrix_messages(), lay.tensor_map, lay.param_split_shape_messages(),
                lay.indices_offset_messages(), lay.field, lay.opt_weight_shard_step,
                lay.opt_weight_shard_size)
               for name, lay in s.layouts]
    return s.current_stage, list(s.strategy_items), layouts


def _tupled(x):
    return tuple(_tupled(e) for e in x) if isinstance(x, list) else x


def ms_map(train_map: dict) -> list[tuple[str, ParamLayout]]:
    """MindSpore's `_convert_to_list` result in our ParamLayout form, order kept."""
    out = []
    for name, v in train_map.items():
        dev, tmap, pss, field, step, size, stages = v
        layout = ParamLayout(tuple(int(d) for d in dev), _tupled(tmap), tuple(pss), field, step, size,
                             tuple(stages))
        out.append((name, layout))
    return out


def our_map(lmap: dict[str, ParamLayout]) -> list[tuple[str, ParamLayout]]:
    return list(lmap.items())


def random_spec(rng: random.Random, multi_axis: bool = True) -> dict:
    """A random but MindSpore-shaped parameter spec (see tests/support/strategies.py)."""
    ndev = rng.choice([0, 1, 1, 2, 2, 3, 4])
    dev = [rng.choice([1, 2, 2, 4, 8]) for _ in range(ndev)] or ([] if rng.random() < 0.3 else [1])
    ndim = rng.choice([0, 1, 2, 2, 3, 4])
    tmap: list = []
    for _ in range(ndim):
        r = rng.random()
        if multi_axis and r < 0.2 and len(dev) >= 2:
            tmap.append(tuple(rng.sample(range(len(dev)), rng.choice([1, 2]))))
        elif r < 0.6 or not dev:
            tmap.append(-1)
        else:
            tmap.append(rng.randrange(len(dev)))
    spec = {
        "dev_matrix": dev,
        "tensor_map": tmap,
        "opt_shard_step": rng.choice([0, 0, 1, 2, 4, -1]),
        "opt_shard_size": rng.choice([0, 0, 2, 4, 8, -1]),
        "field": rng.choice([0, 0, 0, 1, 2, -1]),
    }
    if rng.random() < 0.15:
        k = rng.randint(1, 3)
        spec["param_split_shape"] = [rng.randint(1, 100) for _ in range(k)]
        spec["indices_offset"] = [rng.randint(0, 100) for _ in range(k)]
    if rng.random() < 0.05:
        spec["raw_tensor_maps"] = [[rng.randint(-1, 3) for _ in range(rng.randint(0, 2))]
                                   for _ in range(rng.randint(1, 3))]
    return spec


def random_params(rng: random.Random, n: int, prefix: str = "p", multi_axis: bool = True) -> dict[str, dict]:
    return {f"{prefix}{i}.weight": random_spec(rng, multi_axis) for i in range(n)}


def random_message(rng: random.Random, stages: int = 1, odd: bool = False) -> pb.ParallelStrategyMap:
    """A random strategy message; with several stages, names carry "{stage}-" prefixes and some
    parameters appear in several stages, in a shuffled order. `odd` adds wire-legal shapes MindSpore never
    writes (missing or repeated DevMatrix/ParamSplitShape messages, duplicate names)."""
    msg = strategy_message({}, stage=0, current_stage=rng.choice([0, 1, 3]),
                           strategy_items=[("net/op0", rng.randrange(max(stages, 1)), [[2, 4], [4]])])
    names = [f"layer{i}.w" for i in range(rng.randint(1, 8))]
    entries = []
    for name in names:
        if stages > 1:
            count = rng.choice([1, 1, 1, 2, 2, 3]) if stages >= 3 else rng.choice([1, 2])
            where = rng.sample(range(stages), count)
            for s in where:
                entries.append((f"{s}-{name}", random_spec(rng)))
        else:
            entries.append((name, random_spec(rng)))
    rng.shuffle(entries)
    if odd and entries and rng.random() < 0.5:
        entries.append((rng.choice(entries)[0], random_spec(rng)))
    for name, spec in entries:
        item = msg.parallel_layout_item.add()
        item.param_name = name
        fill_layout(item.parallel_layouts, spec)
        if odd:
            lay = item.parallel_layouts
            r = rng.random()
            if r < 0.1:
                lay.dev_matrix.add().dim.extend([3, 5])
            elif r < 0.15:
                del lay.param_split_shape[:]
            elif r < 0.2:
                lay.param_split_shape.add().dim.extend([7])
            elif r < 0.25:
                del lay.indices_offset[:]
    return msg
