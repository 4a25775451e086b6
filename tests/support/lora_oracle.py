"""The reference for `--lora-merge`: MindFormers' `transform_ckpt_lora.py` flow evaluated with MindSpore.

MindFormers merges the sources into one full checkpoint with `mindspore.transform_checkpoints`, then
replaces each weight by `W + mm(B, A) * lora_scaling` and leaves every `lora_` name out. Here the formula
runs with MindSpore ops in float32 (the factors widened, one cast back to W's type), which is what
mpitrans promises, twice: `expected/` sums the rank in mpitrans' order (k = 0, 1, ...; comparable byte
for byte), `expected_mm/` with `ops.mm` as the script does (its own order: equal within rounding). A
distributed target is the merged full checkpoint resharded by `mindspore.transform_checkpoints` (no
source strategy) to the destination strategy. Run as a subprocess (it imports mindspore):

    python -m tests.support.lora_oracle JOBS.json  # [{"src_dir", "src", "dst", "scaling", "work"}, ...]

`lora_model()` is a small LoRA model with both MindFormers namings (`mindpet_delta_lora_a/_b` and
`.lora_A/.lora_B`), float32/float16/bfloat16 weights and Adam states of the factors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.support.layouts import ParamSpec
from tests.support.oracle import PREFIX, run_oracle_module

OUT, IN, RANK = 16, 24, 4


def lora_model() -> tuple[ParamSpec, ...]:
    """Weights and factors in a training checkpoint's order, then Adam states of two of them."""
    pairs = [("layers.0.wq", "bfloat16", "bfloat16", ".mindpet_delta_lora_a", ".mindpet_delta_lora_b"),
             ("layers.0.wo", "float16", "float32", ".lora_A.weight", ".lora_B.weight"),
             ("layers.1.w3", "float32", "float32", ".mindpet_delta_lora_a", ".mindpet_delta_lora_b")]
    out = [ParamSpec("norm.weight", (IN,), "float32")]
    for base, wdt, fdt, a, b in pairs:
        out += [ParamSpec(f"{base}.weight", (OUT, IN), wdt), ParamSpec(base + a, (RANK, IN), fdt),
                ParamSpec(base + b, (OUT, RANK), fdt)]
    out += [ParamSpec(f"adam_m.{p.name}", p.shape, "float32") for p in out[1:4]]
    return tuple(out)


def expected_merged(jobs: list[dict], work: Path) -> None:
    """Run the oracle for each job: `work/expected` of each holds MindFormers' answer."""
    work.mkdir(parents=True, exist_ok=True)
    run_oracle_module("tests.support.lora_oracle", work / "lora_jobs.json", jobs)


def _product(ms, b, a, ordered: bool):
    """B @ A in float32: `ops.mm`, or (`ordered`) the rank sum taken k = 0, 1, ... with `ops.mul`/`ops.add`,
    the order mpitrans promises (so float32 results can be compared exactly)."""
    from mindspore import ops

    b, a = b.astype(ms.float32), a.astype(ms.float32)
    if not ordered:
        return ops.mm(b, a)
    acc = ops.mul(b[:, 0:1], a[0:1, :])
    for k in range(1, b.shape[1]):
        acc = ops.add(acc, ops.mul(b[:, k:k + 1], a[k:k + 1, :]))
    return acc


def _merge(ms, path: str, out: str, scaling: float, ordered: bool) -> None:
    """transform_ckpt_lora.py's loop, the product in float32."""
    from mindspore import ops

    params = ms.load_checkpoint(path)
    merged = {k: v for k, v in params.items() if "lora_" not in k}
    for k in params:
        if not ("lora_a" in k or "lora_A" in k) or k.split(".")[0] in ("adam_m", "adam_v"):
            continue
        w_key = k.replace("_lora_a", "").replace("mindpet_delta", "weight").replace(".lora_A", "")
        b_key = k.replace("lora_a", "lora_b").replace(".lora_A", ".lora_B")
        w = params[w_key]
        f32 = ms.float32
        delta = ops.mul(_product(ms, params[b_key], params[k], ordered), ms.Tensor(scaling, f32))
        merged[w_key] = ops.add(w.astype(f32), delta).astype(w.dtype)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    ms.save_checkpoint([{"name": k, "data": v} for k, v in merged.items()], out)


def _main(job_file: str) -> None:
    import mindspore as ms

    for job in json.loads(Path(job_file).read_text()):
        work = Path(job["work"])
        ms.transform_checkpoints(job["src_dir"], str(work / "full"), PREFIX, job["src"], None)
        for ordered, name in ((True, "expected"), (False, "expected_mm")):
            target = work / (f"merged_{name}" if job["dst"] else name) / "rank_0" / f"{PREFIX}0.ckpt"
            _merge(ms, str(work / "full" / "rank_0" / f"{PREFIX}0.ckpt"), str(target), job["scaling"], ordered)
            if job["dst"]:
                ms.transform_checkpoints(str(target.parent.parent), str(work / name), PREFIX, None, job["dst"])


if __name__ == "__main__":
    _main(sys.argv[1])
