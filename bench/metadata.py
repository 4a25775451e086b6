"""The metadata-heavy benchmark: many tensors, few bytes, where planning and indexing dominate.

    python -m bench.metadata [--repeats 3] [--procs 2] [--layers 80] [--scenarios e,f] [--out DIR]
    python -m bench.metadata --quick        # a seconds-sized smoke run (tests/test_bench_metadata.py)

A LLaMA-shaped model with Adam states (80 layers: 2,171 tensors) and a tiny hidden size (a few MiB in
all), as a MindSpore training job on 32 devices saves it, resharded to 8 devices:

* e: dp4·mp8 with optimizer sharding (32 ranks) -> dp1·mp8 (8 ranks);
* f: dp2·mp4·pp4 with optimizer sharding (32 ranks, per-stage strategy files) -> dp1·mp8 (8 ranks).

Contenders, on the same warm data in the same run, interleaved over the repeats: `mindspore` (one process,
`mindspore.transform_checkpoints`, including its import) and `mpitrans` (`mpirun -n P python -m mpitrans`,
including start-up). mpitrans' output is compared with MindSpore's byte for byte. Reports the median wall
times, their ratio, and mpitrans' time split by phase (median over repeats of the slowest process).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from bench.layouts import ModelDims, Side, write_strategy
from mpitrans.fixtures.models import llama_params
from mpitrans.storage.ckpt import CheckpointWriter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
MPIRUN = os.path.join(os.path.dirname(PY), "mpirun")


@dataclass(frozen=True)
class AdamDims(ModelDims):
    """The model with its Adam states (m and v for every parameter), as a training checkpoint holds it."""

    def params(self):  # noqa: ANN201 - the fixtures' ModelParam list
        return llama_params(self.layers, self.hidden, self.ffn, self.vocab, adam=True)


SCENARIOS = {
    "e": (Side("dp4mp8opt", dp=4, mp=8, opt=True), Side("dp1mp8", dp=1, mp=8),
          "dp4·mp8 + optimizer sharding (32 ranks) -> dp1·mp8 (8 ranks)"),
    "f": (Side("dp2mp4pp4opt", dp=2, mp=4, pp=4, opt=True), Side("dp1mp8", dp=1, mp=8),
          "dp2·mp4·pp4 + optimizer sharding (32 ranks, stage files) -> dp1·mp8 (8 ranks)"),
}


def _env() -> dict[str, str]:
    """Every timed command's environment. Bytecode is cached (as `bench.run` does, in bench/cache/pycache)
    even where PYTHONDONTWRITEBYTECODE is set: an installed package has its .pyc files, so neither contender
    should pay for compiling its modules at every start."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", GLOG_v="3",
               OMPI_MCA_btl_tcp_if_include="lo", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONPYCACHEPREFIX=os.path.join(REPO, "bench", "cache", "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def build(root: str, dims: AdamDims, src: Side, dst: Side) -> dict:
    """Sources (the full model sharded onto `src` by mpitrans, byte-identical to MindSpore's sharding, which
    the differential tests check) and both strategies; cached under `root`."""
    done = os.path.join(root, "built.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    rng = np.random.default_rng(7)
    full = os.path.join(root, "full.ckpt")
    with CheckpointWriter(full) as w:
        for p in dims.params():
            # Plausible values, never NaN patterns: MindSpore converts bfloat16 through float32, which would
            # canonicalise a NaN's payload and make its output differ from any bit-exact tool's.
            values = (rng.standard_normal(p.shape, dtype=np.float32) * 0.02)
            data = (values.view(np.uint32) >> 16).astype(np.uint16) if p.dtype == "BFloat16" else values
            w.write_tensor(p.name, p.dtype, p.shape, data.tobytes())
        w.write_tensor("global_step", "Int32", (1,), np.array([10], dtype=np.int32).tobytes())
    ours_src, ms_src = write_strategy(src, dims, root)
    _, ms_dst = write_strategy(dst, dims, root)
    subprocess.run([PY, "-m", "mpitrans", "--src-checkpoint", full, "--dst-checkpoint", os.path.join(root, "src"),
                    "--dst-strategy", ms_src, "--quiet"], check=True, env=_env(), cwd=REPO)
    info = {"src": os.path.join(root, "src"), "ours_src_strategy": ours_src, "ms_src_strategy": ms_src,
            "dst_strategy": ms_dst, "tensors": len(dims.params()) + 1}
    with open(done, "w") as f:
        json.dump(info, f)
    return info


def _warm(folder: str) -> None:
    for dirpath, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(1 << 24):
                    pass


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench.metadata: {' '.join(cmd[:6])} ... failed:\n{proc.stderr[-3000:]}")
    return took


def _same_tree(ref: str, out: str) -> bool:
    names = sorted(os.path.relpath(os.path.join(d, f), ref) for d, _, fs in os.walk(ref) for f in fs)
    return bool(names) and all(filecmp.cmp(os.path.join(ref, n), os.path.join(out, n), shallow=False) for n in names)


def run_scenario(key: str, work: str, dims: AdamDims, repeats: int, procs: int) -> dict:
    src, dst, title = SCENARIOS[key]
    info = build(os.path.join(work, f"cache-{key}-{dims.layers}x{dims.hidden}"), dims, src, dst)
    _warm(info["src"])
    times: dict[str, list[float]] = {"mindspore": [], "mpitrans": []}
    phases: list[dict[str, float]] = []
    identical = True
    for rep in range(repeats):
        ms_out, ours = os.path.join(work, f"ms-{key}"), os.path.join(work, f"ours-{key}")
        shutil.rmtree(ms_out, ignore_errors=True)
        shutil.rmtree(ours, ignore_errors=True)
        times["mindspore"].append(_timed([PY, os.path.join(REPO, "bench", "ms_transform.py"), info["src"], ms_out,
                                          info["ms_src_strategy"], info["dst_strategy"]]))
        summary = os.path.join(work, f"summary-{key}.json")
        times["mpitrans"].append(_timed([MPIRUN, "-n", str(procs), "--oversubscribe", PY, "-m", "mpitrans",
                                         "--src-checkpoint", info["src"], "--src-strategy", info["ours_src_strategy"],
                                         "--dst-checkpoint", ours, "--dst-strategy", info["dst_strategy"], "--quiet",
                                         "--json-summary", summary]))
        with open(summary) as f:
            ranks = json.load(f)["ranks"]
        phases.append({p: max(r["phases"].get(p, 0.0) for r in ranks) for p in ranks[0]["phases"]})
        os.unlink(os.path.join(ours, "mpitrans_manifest.json"))
        identical = identical and _same_tree(ms_out, ours)
        print(f"bench.metadata: {key} repeat {rep + 1}: mindspore {times['mindspore'][-1]:.2f} s, "
              f"mpitrans {times['mpitrans'][-1]:.2f} s, identical={identical}", flush=True)
    med = {c: statistics.median(v) for c, v in times.items()}
    split = {p: round(statistics.median(ph[p] for ph in phases), 3) for p in phases[0]}
    return {"scenario": key, "title": title, "tensors": info["tensors"], "procs": procs, "repeats": repeats,
            "times": times, "median": med, "ratio": med["mindspore"] / med["mpitrans"], "identical": identical,
            "phases": split}


def report(results: list[dict], dims: AdamDims) -> str:
    lines = ["# Metadata-heavy benchmark", "",
             f"LLaMA-shaped model with Adam states: {dims.layers} layers, hidden {dims.hidden}, FFN {dims.ffn}, "
             f"vocab {dims.vocab}. Medians of wall seconds (MindSpore's import and mpirun start-up included).", "",
             "| case | tensors | P | mindspore s | mpitrans s | ratio | identical |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['scenario']}: {r['title']} | {r['tensors']} | {r['procs']} "
                     f"| {r['median']['mindspore']:.2f} | {r['median']['mpitrans']:.2f} | {r['ratio']:.1f}x "
                     f"| {r['identical']} |")
    lines += ["", "mpitrans' time by phase (median over repeats of the slowest process, seconds):", "",
              "| case | " + " | ".join(results[0]["phases"]) + " |", "|---|" + "---|" * len(results[0]["phases"])]
    for r in results:
        lines.append(f"| {r['scenario']} | " + " | ".join(f"{v:.3f}" for v in r["phases"].values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metadata", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--layers", type=int, default=80)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--scenarios", default="e,f")
    p.add_argument("--work", default=os.path.join(REPO, "bench", "cache", "metadata"))
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    p.add_argument("--quick", action="store_true", help="4 layers, one repeat, scenario e only")
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.repeats, args.scenarios = 4, 1, "e"
    dims = AdamDims(hidden=args.hidden, ffn=2 * args.hidden, vocab=256, layers=args.layers)
    os.makedirs(args.work, exist_ok=True)
    results = [run_scenario(k, args.work, dims, args.repeats, args.procs) for k in args.scenarios.split(",")]
    text = report(results, dims)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"metadata-{time.strftime('%Y-%m-%d')}" + ("-quick" if args.quick else ""))
    with open(stem + ".md", "w") as f:
        f.write(text)
    with open(stem + ".json", "w") as f:
        json.dump({"dims": dims.to_json(), "results": results}, f, indent=1)
    return 0 if all(r["identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
