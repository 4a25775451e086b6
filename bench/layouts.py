"""The benchmark's model and parallel layouts, and genuine MindSpore strategy files for them.

The model is LLaMA-shaped: token embedding, `layers` decoder blocks (attention wq/wk/wv/wo, feed-forward
w1/w3/w2, two RMS norms), a final norm and an output head. Matrices are bfloat16, norms float32, plus a
float32 learning rate and an int32 step counter, as a training checkpoint holds them.

Model parallelism follows Megatron/MindFormers: wq, wk, wv, w1, w3, the embedding and the head are split
by rows (`tensor_map (0, -1)`), wo and w2 by columns (`(-1, 0)`); norms are replicated. Strategy files are
serialized with MindSpore's own `node_strategy_pb2`, filled the way its C++ writer fills them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from math import prod, sqrt

# (suffix, kind): kind says how model parallelism splits the matrix
_BLOCK = [
    ("attention.wq.weight", "row"), ("attention.wk.weight", "row"), ("attention.wv.weight", "row"),
    ("attention.wo.weight", "col"), ("feed_forward.w1.weight", "row"), ("feed_forward.w3.weight", "row"),
    ("feed_forward.w2.weight", "col"),
]


@dataclass(frozen=True)
class ModelDims:
    hidden: int
    ffn: int
    vocab: int
    layers: int

    def params(self) -> list[tuple[str, tuple[int, ...], str, str, int]]:
        """(name, shape, dtype, kind, layer) in checkpoint order; layer -1 = before the blocks, L = after."""
        h, f = self.hidden, self.ffn
        shapes = {"attention.wq.weight": (h, h), "attention.wk.weight": (h, h), "attention.wv.weight": (h, h),
                  "attention.wo.weight": (h, h), "feed_forward.w1.weight": (f, h),
                  "feed_forward.w3.weight": (f, h), "feed_forward.w2.weight": (h, f)}
        out = [("model.tok_embeddings.embedding_weight", (self.vocab, h), "BFloat16", "row", -1)]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out.append((p + "attention_norm.weight", (h,), "Float32", "none", i))
            out += [(p + s, shapes[s], "BFloat16", k, i) for s, k in _BLOCK]
            out.append((p + "ffn_norm.weight", (h,), "Float32", "none", i))
        out.append(("model.norm_out.weight", (h,), "Float32", "none", self.layers))
        out.append(("lm_head.weight", (self.vocab, h), "BFloat16", "row", self.layers))
        return out

    def nbytes(self) -> int:
        return sum(prod(s) * (2 if d == "BFloat16" else 4) for _, s, d, _, _ in self.params())

    def to_json(self) -> dict:
        return asdict(self) | {"model_bytes": self.nbytes(), "tensors": len(self.params()) + 2}


def _round_to(x: float, m: int) -> int:
    return max(m, int(round(x / m)) * m)


def dims_for(model_bytes: float) -> ModelDims:
    """Pick a LLaMA-like shape whose weights take about `model_bytes` (an even layer count, sizes that
    divide by 8 ways of model / optimizer parallelism)."""
    if model_bytes < 64 << 20:  # tiny models (smoke runs): narrow, short vocabulary
        hidden, vocab = 128, 512
    else:
        # LLaMA proportions, hidden growing with the square root of the size: 0.1 GiB -> ~768, 1.25 -> ~2048
        hidden = min(4096, _round_to(sqrt(model_bytes / 300.0), 128))
        vocab = 32000
    ffn = _round_to(hidden * 8 / 3, 64)
    per_layer = 2 * (4 * hidden * hidden + 3 * hidden * ffn) + 8 * hidden
    fixed = 2 * 2 * vocab * hidden + 4 * hidden
    layers = max(2, 2 * round(max(model_bytes - fixed, 0) / per_layer / 2))
    return ModelDims(hidden, ffn, vocab, layers)


@dataclass(frozen=True)
class Side:
    """One side of a transform: `full` (one unsplit checkpoint, no strategy) or dp x mp [x pp] [+ opt]."""

    name: str
    dp: int = 1
    mp: int = 1
    pp: int = 1
    opt: bool = False  # optimizer (weight) sharding over the data-parallel replicas, MindSpore's default -1

    @property
    def full(self) -> bool:
        return self.name == "full"

    @property
    def stage_devices(self) -> int:
        return self.dp * self.mp

    @property
    def ranks(self) -> int:
        return 1 if self.full else self.stage_devices * self.pp

    def stage_of(self, layer: int, layers: int) -> int:
        """Pipeline stage holding a parameter: blocks split evenly, embedding first, head last."""
        if self.pp == 1:
            return 0
        if layer < 0:
            return 0
        if layer >= layers:
            return self.pp - 1
        return layer * self.pp // layers

    def layout(self, shape: tuple[int, ...], kind: str) -> dict:
        """Strategy entry (dev_matrix, tensor_map, opt shard fields) of one parameter on this side."""
        if kind == "row":
            tmap = [0] + [-1] * (len(shape) - 1)
        elif kind == "col":
            tmap = [-1] * (len(shape) - 1) + [0]
        else:
            tmap = [-1] * len(shape)
        step = size = 0
        if self.opt and self.dp > 1:
            step, size = _opt_shard_fields([self.dp, self.mp], tmap, shape)
        return {"dev_matrix": [self.dp, self.mp], "tensor_map": tmap, "opt_shard_step": step,
                "opt_shard_size": size}

    def replica_ranks(self) -> list[int]:
        """Source ranks whose files together hold one copy of every byte (what the I/O floor reads)."""
        if self.full:
            return [0]
        if self.opt:  # weights are spread over the replicas: every file holds distinct bytes
            return list(range(self.ranks))
        return [s * self.stage_devices + m for s in range(self.pp) for m in range(self.mp)]


def _opt_shard_fields(dev_matrix: list[int], tensor_map: list[int], shape: tuple[int, ...]) -> tuple[int, int]:
    """(opt_weight_shard_step, opt_weight_shard_size) as MindSpore training writes them with the default
    `optimizer_weight_shard_size=-1`: the weight's first dimension is split over its replica group (ranks
    differing only on device axes the tensor map leaves unused); the step is the group's rank stride."""
    used = {len(dev_matrix) - 1 - a for a in tensor_map if a != -1}
    free = [i for i, v in enumerate(dev_matrix) if i not in used and v > 1]
    group = prod(dev_matrix[i] for i in free)
    split0 = dev_matrix[len(dev_matrix) - 1 - tensor_map[0]] if shape and tensor_map[0] != -1 else 1
    if group < 2 or not shape or (shape[0] // split0) % group:
        return 0, 0
    members = [0]
    for i in free:
        stride = prod(dev_matrix[i + 1:])
        members = [m + c * stride for m in members for c in range(dev_matrix[i])]
    return (max(members) - min(members)) // (len(members) - 1), -1


SIDES = {
    "full": Side("full"),
    "dp2mp4": Side("dp2mp4", dp=2, mp=4),
    "dp1mp2": Side("dp1mp2", dp=1, mp=2),
    "dp1mp4": Side("dp1mp4", dp=1, mp=4),
    "dp2mp2pp2opt": Side("dp2mp2pp2opt", dp=2, mp=2, pp=2, opt=True),
}


@dataclass(frozen=True)
class Scenario:
    key: str
    src: Side
    dst: Side
    title: str
    short: str = ""


SCENARIOS = {
    "a": Scenario("a", SIDES["dp2mp4"], SIDES["dp1mp2"], "dp2·mp4 (8 ranks) -> dp1·mp2 (2 ranks)",
                  "dp2·mp4 -> dp1·mp2"),
    "b": Scenario("b", SIDES["dp2mp2pp2opt"], SIDES["dp1mp4"],
                  "dp2·mp2·pp2 + optimizer sharding (8 ranks, per-stage strategies) -> dp1·mp4 (4 ranks)",
                  "dp2·mp2·pp2 + opt. sharding -> dp1·mp4"),
    "c": Scenario("c", SIDES["dp2mp4"], SIDES["full"], "dp2·mp4 (8 ranks) -> full (1 file)", "dp2·mp4 -> full"),
    "d": Scenario("d", SIDES["full"], SIDES["dp2mp4"], "full (1 file) -> dp2·mp4 (8 ranks)", "full -> dp2·mp4"),
}


def replication(side: Side) -> float:
    """Source bytes per model byte on this side (dp replicas hold copies unless optimizer-sharded)."""
    return 1.0 if side.full or side.opt else float(side.dp)


def _strategy_pb2():
    """MindSpore's `node_strategy_pb2`, loaded from its file so that writing a strategy does not pay for
    importing all of MindSpore (~7 s); the normal import when that fails."""
    import importlib.util
    import sys

    spec = None if "mindspore" in sys.modules else importlib.util.find_spec("mindspore")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], "train", "node_strategy_pb2.py")
        if os.path.exists(path):
            mod_spec = importlib.util.spec_from_file_location("_bench_node_strategy_pb2", path)
            module = importlib.util.module_from_spec(mod_spec)
            try:
                mod_spec.loader.exec_module(module)
                return module
            except Exception:  # noqa: BLE001 - fall back to the regular import
                pass
    from mindspore.train import node_strategy_pb2

    return node_strategy_pb2


def _message(side: Side, dims: ModelDims, stage: int | None):
    pb = _strategy_pb2()
    msg = pb.ParallelStrategyMap()
    msg.current_stage = 0
    item = msg.parallel_strategy_item.add()
    item.node_name = "Default/network-LlamaForCausalLM/model-LlamaModel/MatMul-op0"
    item.parallel_strategys.stage = stage or 0
    item.parallel_strategys.parallel_strategy.add().dim.extend([side.dp, side.mp])
    for name, shape, _, kind, layer in dims.params():
        if stage is not None and side.stage_of(layer, dims.layers) != stage:
            continue
        spec = side.layout(shape, kind)
        lay = msg.parallel_layout_item.add()
        lay.param_name = name
        lo = lay.parallel_layouts
        lo.dev_matrix.add().dim.extend(spec["dev_matrix"])
        lo.tensor_map.add().dim.extend(spec["tensor_map"])
        lo.param_split_shape.add()
        lo.indices_offset.add()
        lo.field = 0
        lo.opt_weight_shard_step = spec["opt_shard_step"]
        lo.opt_weight_shard_size = spec["opt_shard_size"]
    return msg


def write_strategy(side: Side, dims: ModelDims, root: str) -> tuple[str | None, str | None]:
    """Write `side`'s strategy under `root`; returns (path for mpitrans, path for MindSpore).

    A pipeline side gets per-stage files in `root/<name>_stages/` as training leaves them (mpitrans merges
    the directory itself) plus the file `mindspore.merge_pipeline_strategys` makes of them. A full side has
    no strategy: (None, None).
    """
    if side.full:
        return None, None
    if side.pp == 1:
        path = os.path.join(root, f"{side.name}_strategy.ckpt")
        with open(path, "wb") as f:
            f.write(_message(side, dims, None).SerializeToString())
        return path, path
    stage_dir = os.path.join(root, f"{side.name}_stages")
    os.makedirs(stage_dir, exist_ok=True)
    for s in range(side.pp):
        with open(os.path.join(stage_dir, f"ckpt_strategy_rank_{s * side.stage_devices}.ckpt"), "wb") as f:
            f.write(_message(side, dims, s).SerializeToString())
    merged = os.path.join(root, f"{side.name}_merged_strategy.ckpt")
    import mindspore as ms

    ms.merge_pipeline_strategys(stage_dir, merged)
    return stage_dir, merged
