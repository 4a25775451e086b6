"""Write genuine MindSpore strategy files for tests from a compact description.

The protobuf bytes come from MindSpore's own `node_strategy_pb2`, filled the way MindSpore's C++ writer
fills it (one DevMatrix, the TensorMap form chosen by the same rule, one ParamSplitShape and one
IndicesOffset message), so tests exercise our reader on real MindSpore bytes rather than on our encoder's.

A parameter spec is a dict::

    {"dev_matrix": (2, 4), "tensor_map": (1, -1), "opt_shard_step": 0, "opt_shard_size": 0, "field": 0,
     "param_split_shape": (), "indices_offset": ()}

`tensor_map` entries are ints (classic) or tuples of device axes (the `Layout` API's multi-axis form,
e.g. ``((1, 0), -1)``). `raw_tensor_maps` writes the given TensorMap messages verbatim instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from math import prod

from mindspore.train import node_strategy_pb2 as pb

DEFAULT_NODE = "Default/network-Net/MatMul-op0"


def tensor_map_messages(tensor_map: Sequence) -> list[list[int]]:
    """The TensorMap messages MindSpore's writer produces for a tensor map.

    Plain ints, or every dimension mapped to exactly one axis, give one flat message; otherwise one message
    per dimension, plus an empty one when there is a single dimension (so readers still see several).
    """
    if not any(isinstance(e, (list, tuple)) for e in tensor_map):
        return [list(tensor_map)]
    per_dim = [list(e) if isinstance(e, (list, tuple)) else [e] for e in tensor_map]
    if all(len(d) == 1 for d in per_dim):
        return [[d[0] for d in per_dim]]
    if len(per_dim) == 1:
        per_dim.append([])
    return per_dim


def fill_layout(layout: pb.ParallelLayouts, spec: Mapping) -> None:
    """Fill one `ParallelLayouts` message from a parameter spec, as MindSpore's writer would."""
    layout.dev_matrix.add().dim.extend(spec["dev_matrix"])
    messages = spec.get("raw_tensor_maps")
    if messages is None:
        messages = tensor_map_messages(spec["tensor_map"])
    for m in messages:
        layout.tensor_map.add().dim.extend(m)
    layout.param_split_shape.add().dim.extend(spec.get("param_split_shape", ()))
    layout.indices_offset.add().dim.extend(spec.get("indices_offset", ()))
    layout.field = spec.get("field", 0)
    layout.opt_weight_shard_step = spec.get("opt_shard_step", 0)
    layout.opt_weight_shard_size = spec.get("opt_shard_size", 0)


def strategy_message(
    params: Mapping[str, Mapping],
    stage: int = 0,
    current_stage: int = 0,
    strategy_items: Sequence[tuple[str, int, Sequence[Sequence[int]]]] | None = None,
) -> pb.ParallelStrategyMap:
    """A filled `ParallelStrategyMap`; by default one strategy item carrying `stage`."""
    msg = pb.ParallelStrategyMap()
    msg.current_stage = current_stage
    if strategy_items is None:
        first = next(iter(params.values()), {"dev_matrix": (1,)})
        strategy_items = [(DEFAULT_NODE, stage, [list(first["dev_matrix"])])]
    for node, item_stage, dims in strategy_items:
        item = msg.parallel_strategy_item.add()
        item.node_name = node
        item.parallel_strategys.stage = item_stage
        for d in dims:
            item.parallel_strategys.parallel_strategy.add().dim.extend(d)
    for name, spec in params.items():
        item = msg.parallel_layout_item.add()
        item.param_name = name
        fill_layout(item.parallel_layouts, spec)
    return msg


def strategy_json(
    params: Mapping[str, Mapping],
    stage: int = 0,
    current_stage: int = 0,
    strategy_items: Sequence[tuple[str, int, Sequence[Sequence[int]]]] | None = None,
) -> dict:
    """The JSON document MindSpore's C++ writer produces (keys as in `StrategyCheckpointInfo::to_json`)."""
    if strategy_items is None:
        first = next(iter(params.values()), {"dev_matrix": (1,)})
        strategy_items = [(DEFAULT_NODE, stage, [list(first["dev_matrix"])])]
    layouts = {}
    for name, spec in params.items():
        if any(isinstance(e, (list, tuple)) for e in spec["tensor_map"]):
            raise ValueError("MindSpore's JSON strategy holds flat tensor maps only")
        entry = {
            "dev_matrix": list(spec["dev_matrix"]),
            "tensor_map": list(spec["tensor_map"]),
            "tensor_shape": list(spec.get("tensor_shape", [])),
            "field": spec.get("field", 0),
            "opt_weight_shard_step": spec.get("opt_shard_step", 0),
            "opt_weight_shard_size": spec.get("opt_shard_size", 0),
        }
        if spec.get("param_split_shape"):
            entry["param_split_shape"] = list(spec["param_split_shape"])
            entry["indices_offset"] = list(spec.get("indices_offset", [0] * len(spec["param_split_shape"])))
        layouts[name] = entry
    return {
        "current_stage": current_stage,
        "parallel_strategy_item": {n: {"stage": s, "parallel_strategy": [list(d) for d in dims]}
                                   for n, s, dims in strategy_items},
        "parallel_layout_item": layouts,
    }


def write_strategy_file(
    path: str | os.PathLike[str],
    params: Mapping[str, Mapping],
    stage: int = 0,
    fmt: str = "pb",
    current_stage: int = 0,
    strategy_items: Sequence[tuple[str, int, Sequence[Sequence[int]]]] | None = None,
) -> str:
    """Write one stage's strategy file (`fmt` "pb" or "json") and return its path."""
    path = os.fspath(path)
    if fmt == "pb":
        data = strategy_message(params, stage, current_stage, strategy_items).SerializeToString()
        with open(path, "wb") as f:
            f.write(data)
    elif fmt == "json":
        with open(path, "w", encoding="utf-8") as f:
            json.dump(strategy_json(params, stage, current_stage, strategy_items), f)
    else:
        raise ValueError(f"unknown strategy format {fmt!r}")
    return path


def write_pipeline_stage_files(
    directory: str | os.PathLike[str],
    stage_params: Sequence[Mapping[str, Mapping]],
    fmt: str = "pb",
    stage_device_num: int | None = None,
    all_ranks: bool = False,
) -> list[str]:
    """Per-stage files as a pipeline-parallel training run leaves them: ``ckpt_strategy_rank_{r}.ckpt``.

    Stage `s` holds ranks ``s * n .. (s + 1) * n - 1``, with `n` the product of the first parameter's
    device matrix unless given. Only the first rank of each stage gets a file unless `all_ranks`, in which
    case every rank writes the same bytes, as in a real run. JSON files end in ``.json`` instead.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    ext = ".ckpt" if fmt == "pb" else ".json"
    paths = []
    for stage, params in enumerate(stage_params):
        n = stage_device_num or prod(next(iter(params.values()))["dev_matrix"])
        ranks = range(stage * n, (stage + 1) * n) if all_ranks else [stage * n]
        for rank in ranks:
            path = os.path.join(directory, f"ckpt_strategy_rank_{rank}{ext}")
            paths.append(write_strategy_file(path, params, stage=stage, fmt=fmt))
    return paths
