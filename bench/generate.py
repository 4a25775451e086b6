"""Build one cached source checkpoint set with MindSpore itself (run as a subprocess by the benchmark).

    python -m bench.generate --side dp2mp4 --model-bytes 1.3e9 --dir bench/cache/ms2.10.0/dp2mp4-2.5G

1. the full model, saved by `mindspore.save_checkpoint` (bfloat16 matrices, float32 norms, a step counter
   and a learning rate), with cheap pseudo-random contents (a tiled random block, shifted per tensor);
2. the source strategy (per-stage files plus MindSpore's merge of them for a pipeline side);
3. `mindspore.transform_checkpoints(full, src, ...)`: the source shards, `src/rank_x/checkpoint_x.ckpt`.
   A `full` side keeps the full model as its only source, `src/rank_0/model.ckpt`.

The set is built under `DIR.partial` and renamed to DIR when complete, so an interrupted run leaves no
half-built cache entry behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from math import prod

import numpy as np

from bench.layouts import SIDES, dims_for, write_strategy

BLOCK_ELEMS = 1 << 20


def save_full_model(dims, path: str, seed: int = 2024) -> None:
    import mindspore as ms

    rng = np.random.default_rng(seed)
    block = (rng.standard_normal(BLOCK_ELEMS, dtype=np.float32) * 0.02).astype(np.float32)
    items = []
    for i, (name, shape, dtype, _, _) in enumerate(dims.params()):
        n = prod(shape)
        start = (i * 7919) % BLOCK_ELEMS
        arr = np.resize(np.roll(block, -start), n).reshape(shape)
        ms_dtype = ms.bfloat16 if dtype == "BFloat16" else ms.float32
        if dtype == "Float32":
            arr = 1.0 + arr
        items.append({"name": name, "data": ms.Tensor(arr, dtype=ms_dtype)})
        del arr
    items.append({"name": "global_step", "data": ms.Tensor(np.array([1000], dtype=np.int32))})
    items.append({"name": "learning_rate", "data": ms.Tensor(np.array(3e-4, dtype=np.float32))})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ms.save_checkpoint(items, path)


def build(side_name: str, model_bytes: float, final_dir: str) -> dict:
    import mindspore as ms

    side = SIDES[side_name]
    dims = dims_for(model_bytes)
    work = final_dir + ".partial"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    t0 = time.perf_counter()
    full_dir = os.path.join(work, "src" if side.full else "full")
    save_full_model(dims, os.path.join(full_dir, "rank_0", "model.ckpt"))
    t_save = time.perf_counter() - t0
    src_strategy, ms_src_strategy = write_strategy(side, dims, work)
    if not side.full:
        ms.transform_checkpoints(full_dir, os.path.join(work, "src"), "checkpoint_", None, ms_src_strategy)
        shutil.rmtree(full_dir)
    src_files = []
    for dirpath, _, files in os.walk(os.path.join(work, "src")):
        src_files += [os.path.join(dirpath, f) for f in files]
    meta = {
        "side": side_name,
        "model": dims.to_json(),
        "mindspore": ms.__version__,
        "source_bytes": sum(os.path.getsize(f) for f in src_files),
        "source_files": len(src_files),
        "src_strategy": os.path.relpath(src_strategy, work) if src_strategy else None,
        "ms_src_strategy": os.path.relpath(ms_src_strategy, work) if ms_src_strategy else None,
        "seconds": {"save_full": round(t_save, 2), "total": round(time.perf_counter() - t0, 2)},
    }
    with open(os.path.join(work, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    shutil.rmtree(final_dir, ignore_errors=True)
    os.rename(work, final_dir)
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__.splitlines()[0])
    p.add_argument("--side", required=True, choices=sorted(SIDES))
    p.add_argument("--model-bytes", type=float, required=True)
    p.add_argument("--dir", required=True)
    args = p.parse_args(argv)
    meta = build(args.side, args.model_bytes, args.dir)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
