"""A small, self-contained example job: `python -m mpitrans.example build|check DIR`.

`build` writes a tiny LLaMA-shaped model (`mpitrans.fixtures.models`, without feed-forward norms and head:
bfloat16 weights, float32 norms and Adam states, a step counter) as one full checkpoint, plus two strategy
files: the training layout (8 ranks: data parallel 2 x model parallel 4) and a new layout (4 ranks: data
parallel 2 x model parallel 2). The quickstart then shards the full model into the 8 training ranks and
reshards those to 4 ranks, both with mpitrans under mpirun. `check` compares the result with
`mindspore.transform_checkpoints` on the same input, byte for byte; it fails (exit status 2) when MindSpore is
not installed, since then nothing was checked.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys

import numpy as np

from mpitrans.fixtures.models import llama_params, megatron_tensor_map
from mpitrans.metadata import TensorMeta
from mpitrans.storage.formats import CKPT
from mpitrans.strategy.codec import write_strategy
from mpitrans.strategy.model import RawLayout, StrategyFile

HIDDEN, FFN, VOCAB, LAYERS = 128, 256, 512, 2
_NEUTRAL = {"BFloat16": "bfloat16", "Float32": "float32"}  # the fixtures' MindSpore type names
PARAMS = llama_params(LAYERS, HIDDEN, FFN, VOCAB, adam=True, ffn_norm=False, head=False)


def _strategy(dp: int, mp: int) -> StrategyFile:
    layouts = [(p.name, RawLayout(dev_matrix=(dp, mp), tensor_map=(megatron_tensor_map(p.shape, p.split),)))
               for p in PARAMS]
    return StrategyFile(layouts=layouts, strategy_items=[("Default/network", 0, ((dp, mp),))], current_stage=0)


def _random_bytes(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> bytes:
    if dtype == "BFloat16":  # upper halves of float32 normals: plausible bfloat16 weights
        f = (rng.standard_normal(shape, dtype=np.float32) * 0.02).view(np.uint32)
        return (f >> 16).astype(np.uint16).tobytes()
    return (rng.standard_normal(shape, dtype=np.float32) * 0.01).tobytes()


def build(root: str) -> None:
    rng = np.random.default_rng(2024)
    os.makedirs(os.path.join(root, "full"), exist_ok=True)
    full = os.path.join(root, "full", "model" + CKPT.suffix)
    tensors = [TensorMeta(p.name, _NEUTRAL[p.dtype], p.shape) for p in PARAMS]
    tensors += [TensorMeta("global_step", "int32", (1,)), TensorMeta("learning_rate", "float32", ())]
    out = CKPT.open_target(full, tensors)
    for p in PARAMS:
        out.write(memoryview(_random_bytes(rng, p.shape, p.dtype)))
    out.write(memoryview(np.array([1000], dtype=np.int32).tobytes()))
    out.write(memoryview(np.array(3e-4, dtype=np.float32).tobytes()))
    out.commit()
    write_strategy(_strategy(2, 4), os.path.join(root, "src_strategy.ckpt"))
    write_strategy(_strategy(2, 2), os.path.join(root, "dst_strategy.ckpt"))
    size = os.path.getsize(full)
    print(f"example: full model {full} ({size / 2**20:.1f} MiB, {len(PARAMS) + 2} tensors)")
    print(f"example: strategies {root}/src_strategy.ckpt (dp2 x mp4, 8 ranks), "
          f"{root}/dst_strategy.ckpt (dp2 x mp2, 4 ranks)")


def check(root: str) -> int:
    """Compare mpitrans' output with MindSpore's transform of the same source, file by file."""
    ours = os.path.join(root, "dst")
    try:
        import mindspore as ms  # the oracle; only the check uses it
    except ImportError:
        print("check: mindspore is not installed, so nothing was checked; install mpitrans[mindspore] to "
              "compare with mindspore.transform_checkpoints", file=sys.stderr)
        return 2
    ref = os.path.join(root, "mindspore_dst")
    ms.transform_checkpoints(os.path.join(root, "src"), ref, "checkpoint_",
                             os.path.join(root, "src_strategy.ckpt"), os.path.join(root, "dst_strategy.ckpt"))
    bad = []
    n = 0
    for dirpath, _, files in os.walk(ref):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), ref)
            n += 1
            mine = os.path.join(ours, rel)
            if not os.path.exists(mine) or not filecmp.cmp(mine, os.path.join(ref, rel), shallow=False):
                bad.append(rel)
    if bad or n == 0:
        print(f"check: MISMATCH with mindspore.transform_checkpoints: {bad or 'no files'}")
        return 1
    print(f"check: all {n} target files are byte-identical to mindspore.transform_checkpoints' output")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mpitrans.example", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["build", "check"])
    p.add_argument("dir")
    args = p.parse_args(argv)
    if args.action == "build":
        build(args.dir)
        return 0
    return check(args.dir)


if __name__ == "__main__":
    sys.exit(main())
