"""The benchmark's model and parallel layouts, and genuine MindSpore strategy files for them.

The model is LLaMA-shaped: token embedding, `layers` decoder blocks (attention wq/wk/wv/wo, feed-forward
w1/w3/w2, two RMS norms), a final norm and an output head. Matrices are bfloat16, norms float32, plus a
float32 learning rate and an int32 step counter, as a training checkpoint holds them.

Model parallelism follows Megatron/MindFormers: wq, wk, wv, w1, w3, the embedding and the head are split
by rows (`tensor_map (0, -1)`), wo and w2 by columns (`(-1, 0)`); norms are replicated. The model and the
strategy writer (MindSpore's own `node_strategy_pb2`, filled the way its C++ writer fills it) are the shared
fixtures of `mpitrans.fixtures`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from math import sqrt

from mpitrans.fixtures.layouts import opt_shard_fields
from mpitrans.fixtures.models import ModelParam, llama_params, megatron_tensor_map, total_bytes
from mpitrans.fixtures.strategies import write_strategy_file

NODE = "Default/network-LlamaForCausalLM/model-LlamaModel/MatMul-op0"


@dataclass(frozen=True)
class ModelDims:
    hidden: int
    ffn: int
    vocab: int
    layers: int

    def params(self) -> list[ModelParam]:
        """(name, shape, dtype, split, layer) in checkpoint order; layer -1 = before the blocks, L = after."""
        return llama_params(self.layers, self.hidden, self.ffn, self.vocab)

    def nbytes(self) -> int:
        return total_bytes(self.params())

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

    def layout(self, shape: tuple[int, ...], split: str) -> dict:
        """Strategy entry (dev_matrix, tensor_map, opt shard fields) of one parameter on this side."""
        tmap = list(megatron_tensor_map(shape, split))
        step = size = 0
        if self.opt and self.dp > 1:
            step, size = opt_shard_fields([self.dp, self.mp], tmap, shape)
        return {"dev_matrix": [self.dp, self.mp], "tensor_map": tmap, "opt_shard_step": step,
                "opt_shard_size": size}

    def replica_ranks(self) -> list[int]:
        """Source ranks whose files together hold one copy of every byte (what the I/O floor reads)."""
        if self.full:
            return [0]
        if self.opt:  # weights are spread over the replicas: every file holds distinct bytes
            return list(range(self.ranks))
        return [s * self.stage_devices + m for s in range(self.pp) for m in range(self.mp)]


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


def _write(side: Side, dims: ModelDims, stage: int | None, path: str) -> None:
    """One strategy file of `side`: every parameter, or those of pipeline stage `stage`."""
    params = {p.name: side.layout(p.shape, p.split) for p in dims.params()
              if stage is None or side.stage_of(p.layer, dims.layers) == stage}
    write_strategy_file(path, params, strategy_items=[(NODE, stage or 0, [[side.dp, side.mp]])])


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
        _write(side, dims, None, path)
        return path, path
    stage_dir = os.path.join(root, f"{side.name}_stages")
    os.makedirs(stage_dir, exist_ok=True)
    for s in range(side.pp):
        _write(side, dims, s, os.path.join(stage_dir, f"ckpt_strategy_rank_{s * side.stage_devices}.ckpt"))
    merged = os.path.join(root, f"{side.name}_merged_strategy.ckpt")
    import mindspore as ms

    ms.merge_pipeline_strategys(stage_dir, merged)
    return stage_dir, merged
