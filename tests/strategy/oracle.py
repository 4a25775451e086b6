"""MindSpore as the reference for the strategy oracle tests: its parse, its layout lists, its merge.

Everything here may import mindspore; the code under test never does (random strategies: `samples`).
"""

from __future__ import annotations

import pytest

ms = pytest.importorskip("mindspore")
from mindspore.parallel import _parallel_serialization as ps  # noqa: E402
from mindspore.parallel.checkpoint_transform import merge_pipeline_strategys as ms_merge  # noqa: E402
from mindspore.train import node_strategy_pb2 as pb  # noqa: E402

from mpitrans.strategy.model import ParamLayout, StrategyFile  # noqa: E402

__all__ = ["pb", "ps", "ms_merge", "ms_content", "our_content", "ms_map", "our_map"]


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


