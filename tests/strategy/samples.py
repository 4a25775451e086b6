"""Strategy inputs for the strategy tests, none needing MindSpore: sample parameter specs, hand-made protobuf
encodings, random strategy messages and a small pipeline model.

Random entries come from `mpitrans.fixtures.random_layouts` ("wire" profile); messages are MindSpore's own
`node_strategy_pb2` classes (`mpitrans.fixtures.strategies`), loaded without importing MindSpore.
"""

from __future__ import annotations

import os
import random

from mpitrans.fixtures.random_layouts import random_layout
from mpitrans.fixtures.strategies import fill_layout, strategy_message
from mpitrans.strategy.codec import read_strategy

# --- parameter specs ----------------------------------------------------------------------------------------

CLASSIC = {
    "embedding.weight": {"dev_matrix": (2, 4), "tensor_map": (1, -1)},
    "dense.weight": {"dev_matrix": (2, 4), "tensor_map": (0, 1), "opt_shard_step": 4, "opt_shard_size": 2},
    "dense.bias": {"dev_matrix": (2, 4), "tensor_map": (-1,), "opt_shard_step": 1, "opt_shard_size": -1},
    "field.weight": {"dev_matrix": (8,), "tensor_map": (0, -1), "field": 39,
                     "param_split_shape": (3, 5), "indices_offset": (0, 3)},
    "scalar": {"dev_matrix": (2, 4), "tensor_map": ()},
}
MULTI_AXIS = {
    # The Layout API: ("dp", "mp") on dim 0 -> one TensorMap per dimension.
    "w2d": {"dev_matrix": (2, 2, 2), "tensor_map": ((2, 1), -1)},
    # A lone multi-axis dimension: MindSpore appends an empty TensorMap so readers see several.
    "w1d": {"dev_matrix": (2, 4), "tensor_map": ((1, 0),)},
    # One axis per dimension: written in the flat classic form.
    "flat": {"dev_matrix": (2, 4), "tensor_map": ((1,), (0,))},
    "mixed": {"dev_matrix": (2, 2, 2), "tensor_map": (-1, (2, 0), 1)},
}


# --- small wire-format builders for hand-made encodings -----------------------------------------------------


def varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while v > 0x7F:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def tag(num: int, wt: int) -> bytes:
    return varint(num << 3 | wt)


def ld(num: int, payload: bytes) -> bytes:
    return tag(num, 2) + varint(len(payload)) + payload


def packed(values: list[int]) -> bytes:
    return ld(1, b"".join(varint(v) for v in values))


def unpacked(values: list[int]) -> bytes:
    return b"".join(tag(1, 0) + varint(v) for v in values)


def layouts_msg(dev: bytes, tmaps: list[bytes], extra: bytes = b"") -> bytes:
    body = ld(1, dev) + b"".join(ld(2, t) for t in tmaps) + ld(3, b"") + ld(4, b"")
    body += tag(5, 0) + varint(0) + tag(6, 0) + varint(-1) + tag(7, 0) + varint(2) + extra
    return body


def map_msg(layouts: list[tuple[str, bytes]], items: bytes = b"", top_extra: bytes = b"") -> bytes:
    out = tag(1, 0) + varint(0) + items
    for name, body in layouts:
        out += ld(3, ld(1, name.encode()) + ld(2, body))
    return out + top_extra


# --- a pipeline model -----------------------------------------------------------------------------------------


def spec(dev, tmap, **kw):
    return {"dev_matrix": dev, "tensor_map": tmap, **kw}


def stage_params(stages: int) -> list[dict]:
    """A small pipeline model: tied embedding in the first and last stage, a layer per stage."""
    out = []
    for s in range(stages):
        params = {f"model.layers.{s}.w": spec((2, 2), (1, 0), opt_shard_step=2, opt_shard_size=2),
                  f"model.layers.{s}.multi": spec((2, 2, 1), ((2, 1), -1))}
        if s == 0:
            params = {"model.embedding": spec((2, 2), (0, -1)), **params}
        if s == stages - 1:
            params["model.embedding"] = spec((4, 1), (-1, 0))
            params["lm_head.bias"] = spec((2, 2), (-1,), field=-1)
        out.append(params)
    return out


def snapshot(directory) -> dict[str, tuple[bytes, int]]:
    out = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        out[name] = (open(path, "rb").read(), os.stat(path).st_mtime_ns)
    return out


# --- random strategies ----------------------------------------------------------------------------------------


def random_spec(rng: random.Random, multi_axis: bool = True) -> dict:
    """A random parameter spec as a strategy file may hold it (see `mpitrans.fixtures.strategies`)."""
    return random_layout(rng, profile="wire", multi_axis=multi_axis).to_strategy_spec()


def random_params(rng: random.Random, n: int, prefix: str = "p", multi_axis: bool = True) -> dict[str, dict]:
    return {f"{prefix}{i}.weight": random_spec(rng, multi_axis) for i in range(n)}


def random_message(rng: random.Random, stages: int = 1, odd: bool = False):
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
    for name, param_spec in entries:
        item = msg.parallel_layout_item.add()
        item.param_name = name
        fill_layout(item.parallel_layouts, param_spec)
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


def write_message(tmp_path, msg, name: str = "s.ckpt"):
    """Write a strategy message to `tmp_path / name`; return the path and our reading of it."""
    path = tmp_path / name
    path.write_bytes(msg.SerializeToString())
    return str(path), read_strategy(path)
