"""Planning at scale, no files: `python -m bench.planning [--quick] [--out FILE]`.

A rank's preparation must cost what it writes, not what the cluster holds (issue 12). This benchmark
plans a synthetic LLaMA-70B-shaped model (80 layers, hidden 8192, FFN 28672, vocab 32000, with Adam
states m and v: 2,169 parameters plus a step counter and the learning rate) with `Planner` directly, from
64, 256 and 1024 source ranks (dp·mp, and dp·mp·pp with optimizer sharding) onto 8, 64 and 512 targets.
The strategies are mpitrans' own `StrategyFile`s (MindSpore is not needed) and the metadata is
synthesized as `TensorMeta` lists; files of one pipeline stage list the same names, dtypes and shapes,
so they share one list, as a compact metadata exchange delivers them.

Each case runs in its own process so that its peak RSS (`resource.getrusage`) is its own. The table
gives the seconds to build the `Planner`, to plan the first target and the median seconds of planning
one target (over a few targets spread over the range), the seconds of the planning layer's whole-job
steps (MindSpore's rank list for every target, the consistency checks over every file) and the peak
RSS; it is printed and written as markdown.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mpitrans.strategy
from bench.layouts import ModelDims, Side
from mpitrans.fixtures.models import ModelParam, llama_params
from mpitrans.job.exchange import decide_readers
from mpitrans.job.transport import LocalTransport
from mpitrans.metadata import TensorMeta
from mpitrans.plan.consistency import check_sources
from mpitrans.plan.coverage import needed_sources
from mpitrans.plan.layout import box_shape, device_box, flatten_layout
from mpitrans.plan.planner import Planner
from mpitrans.strategy.codec import write_strategy
from mpitrans.strategy.layout_map import layout_map
from mpitrans.strategy.model import RawLayout, StrategyFile

MODEL_70B = ModelDims(hidden=8192, ffn=28672, vocab=32000, layers=80)
DTYPES = {"BFloat16": "bfloat16", "Float32": "float32"}
SCALARS = [TensorMeta("global_step", "int32", (1,)), TensorMeta("learning_rate", "float32", ())]
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    src: Side
    dst: Side
    per_case: int = 5  # targets planned (the median is reported)

    def to_json(self) -> dict:
        return {"src": vars(self.src), "dst": vars(self.dst), "per_case": self.per_case}

    @staticmethod
    def from_json(doc: dict) -> Case:
        return Case(Side(**doc["src"]), Side(**doc["dst"]), doc["per_case"])


def side_name(side: Side) -> str:
    name = f"dp{side.dp}·mp{side.mp}" + (f"·pp{side.pp}" if side.pp > 1 else "")
    return name + (" + opt. shard" if side.opt else "")


def model_params(dims: ModelDims) -> list[ModelParam]:
    """The model's parameters and their Adam states (same shape and layout, float32)."""
    return llama_params(dims.layers, dims.hidden, dims.ffn, dims.vocab, adam=True)


def strategy(side: Side, dims: ModelDims) -> StrategyFile:
    """The side's strategy, merged over pipeline stages the way MindSpore merges stage files."""
    layouts = []
    for name, shape, _, kind, layer in model_params(dims):
        spec = side.layout(shape, kind)
        raw = RawLayout(dev_matrix=tuple(spec["dev_matrix"]), tensor_map=(tuple(spec["tensor_map"]),),
                        opt_weight_shard_step=spec["opt_shard_step"],
                        opt_weight_shard_size=spec["opt_shard_size"])
        layouts.append((f"{side.stage_of(layer, dims.layers)}-{name}" if side.pp > 1 else name, raw))
    node = "Default/network-LlamaForCausalLM/model-LlamaModel/MatMul-op0"
    items = [(node, s, ((side.dp, side.mp),)) for s in range(side.pp)]
    return StrategyFile(layouts=layouts, strategy_items=items, current_stage=1 if side.pp > 1 else 0)


def source_metas(side: Side, dims: ModelDims, strat: StrategyFile) -> dict[int, list[TensorMeta]]:
    """Every source file's metadata; the files of one stage share one list (even splits: same shards)."""
    lmap = layout_map(strat)
    per_stage: list[list[TensorMeta]] = [[] for _ in range(side.pp)]
    for name, shape, dtype, _, layer in model_params(dims):
        flat = flatten_layout(lmap[name], shape)
        shard = box_shape(device_box(flat, 0))
        per_stage[side.stage_of(layer, dims.layers)].append(TensorMeta(name, DTYPES[dtype], shard))
    for metas in per_stage:
        metas.extend(SCALARS)
    return {g: per_stage[g // side.stage_devices] for g in range(side.ranks)}


def spread(n: int, k: int) -> list[int]:
    """`k` targets spread over 0..n-1 (first, last and between)."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def run_case(case: Case) -> dict:
    """Measure one case in this process."""
    dims = MODEL_70B
    src, dst = strategy(case.src, dims), strategy(case.dst, dims)
    metas = source_metas(case.src, dims, src)
    t0 = time.perf_counter()
    planner = Planner(src, dst, metas)
    build = time.perf_counter() - t0
    targets = planner.target_ranks()
    times, tensors, regions = [], 0, 0
    for tr in spread(len(targets), case.per_case):
        t0 = time.perf_counter()
        plan = planner.plan(targets[tr])
        times.append(time.perf_counter() - t0)
        tensors = len(plan.tensors)
        regions = sum(len(t.regions) for t in plan.tensors)
    t0 = time.perf_counter()
    needed_sources(src, dst, "checkpoint_")
    needed = time.perf_counter() - t0
    t0 = time.perf_counter()
    check_sources(src, dst, metas, {}, list(metas), "/src")
    checks = time.perf_counter() - t0
    rank_prep, rank0 = one_rank(src, dst, metas)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"build_s": build, "plan_s": times, "targets": len(targets), "tensors": tensors, "regions": regions,
            "needed_s": needed, "checks_s": checks, "peak_rss_mib": peak, "rank_prep_s": rank_prep,
            "rank0_strategy_s": rank0}


def one_rank(src: StrategyFile, dst: StrategyFile, metas: dict[int, list[TensorMeta]]) -> tuple[float, float]:
    """(one process's whole preparation in a job of one process per target, rank 0's strategy handling).

    The process: parses both strategies from the broadcast payloads (`strategy.load_from_payload`), builds
    its planner, takes MindSpore's rank list of its target, plans it, and decides its regions' readers
    with the job's own `decide_readers` (each source file seen by one process, no shared disk): regions
    whose wanting writers it can name are decided alone, the rest go through their owner (this process,
    in a one-process transport: its share when regions spread evenly over the owners). Rank 0: reads both
    strategy files into their payloads."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, f"{n}.ckpt") for n in ("src", "dst")]
        write_strategy(src, paths[0])
        write_strategy(dst, paths[1])
        t0 = time.perf_counter()
        blobs = [mpitrans.strategy.load_payload(p) for p in paths]
        rank0 = time.perf_counter() - t0
    t0 = time.perf_counter()
    s, d = (mpitrans.strategy.load_from_payload(b) for b in blobs)
    planner = Planner(s, d, metas)
    targets = planner.target_ranks()
    target = targets[-1]
    planner.rank_list(target)
    plan = planner.plan(target)
    where = {tr: tr % 512 for tr in targets}
    decide_readers(LocalTransport(), {target: plan}, {g: [g % 512] for g in metas}, {}, where)
    return time.perf_counter() - t0, rank0


def cases(per_case: int, sources: list[int], targets: list[int]) -> list[Case]:
    """Source layouts dp·mp8 and dp·mp8·pp4 with optimizer sharding; targets dp·mp8 (8) or dp·mp16."""
    out = []
    for n in sources:
        for src in (Side("src", dp=n // 8, mp=8), Side("src", dp=n // 32, mp=8, pp=4, opt=True)):
            if src.dp < 1:
                continue
            for m in targets:
                mp = 8 if m <= 8 else 16
                out.append(Case(src, Side("dst", dp=max(1, m // mp), mp=min(mp, m)), per_case))
    return out


def measure(case: Case) -> dict:
    """Run one case in a child process (its own peak RSS)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "bench.planning", "--case", json.dumps(case.to_json())],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


HEADER = ("| source layout | source ranks | target layout | targets | tensors/target | regions/target "
          "| Planner build s | first target s | s per target (median) | needed_sources s | check_sources s "
          "| one rank's preparation s | rank 0 strategies s | peak RSS MiB |")
COLUMNS = 14


def row(case: Case, res: dict) -> str:
    head = f"| {side_name(case.src)} | {case.src.ranks} | {side_name(case.dst)} | {case.dst.ranks} |"
    if "error" in res:
        return head + f" error: {res['error']} |" + " |" * (COLUMNS - 5)
    return (head + f" {res['tensors']} | {res['regions']} | {res['build_s']:.3f} | {res['plan_s'][0]:.3f} | "
            f"{statistics.median(res['plan_s']):.3f} | {res['needed_s']:.3f} | {res['checks_s']:.3f} | "
            f"{res['rank_prep_s']:.3f} | {res['rank0_strategy_s']:.3f} | {res['peak_rss_mib']:.0f} |")


def document(rows: list[str], args: argparse.Namespace, model: ModelDims, params: int) -> str:
    """The results file: what was measured, on what, and the table."""
    cmd = f"python -m bench.planning --sources {args.sources} --targets {args.targets} --per-case {args.per_case}"
    return "\n".join([
        f"# Planning at scale ({datetime.date.today().isoformat()})", "",
        f"`{cmd}` on {platform.machine()} with {os.cpu_count()} CPUs, Python {platform.python_version()}. "
        f"Model: {model.layers} layers, hidden {model.hidden}, FFN {model.ffn}, vocab {model.vocab}, "
        f"with Adam states ({params} parameters plus `global_step` and `learning_rate`). One process per case, "
        f"metadata synthesized (no files). 'first target' is the first plan of a fresh `Planner` (it also "
        f"parses the rank-cut layout maps and the rank-list basis, which later targets of the same stage "
        f"reuse); 's per target' is the median over {args.per_case} targets spread over "
        f"the target ranks, the first included. `needed_sources` is MindSpore's rank list for every target "
        f"(the files a job indexes), `check_sources` the consistency checks over every source file's metadata "
        f"(files of one stage share one list). 'one rank's preparation' is one process of a job with one "
        f"process per target (no shared disk: each source file seen by one process): parse both strategies "
        f"from the broadcast payloads, build its planner, take its target's rank list, plan it, and decide "
        f"its regions' readers with the job's `decide_readers` (alone where it can name every wanting "
        f"writer, else as the regions' owner, its share when they spread evenly) (`one_rank`); "
        f"'rank 0 strategies' reads both strategy files into the broadcast payloads (every process then "
        f"parses them at once). Peak RSS is the case process's.", "",
        HEADER, "|" + "---|" * COLUMNS, *rows, ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.planning", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a seconds-sized smoke run (64 sources, 8 and 64 targets)")
    p.add_argument("--out", help="markdown results file (default bench/results/planning-<date>.md)")
    p.add_argument("--sources", default=None, help="comma-separated source rank counts (default 64,256,1024)")
    p.add_argument("--targets", default=None, help="comma-separated target rank counts (default 8,64,512)")
    p.add_argument("--per-case", type=int, default=None, help="targets planned per case (default 5)")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(Case.from_json(json.loads(args.case)))))
        return 0
    args.sources = args.sources or ("64" if args.quick else "64,256,1024")
    args.targets = args.targets or ("8,64" if args.quick else "8,64,512")
    sources = [int(x) for x in args.sources.split(",")]
    targets = [int(x) for x in args.targets.split(",")]
    args.per_case = args.per_case or (2 if args.quick else 5)
    print(HEADER)
    print("|" + "---|" * COLUMNS)
    rows, failed = [], False
    for case in cases(args.per_case, sources, targets):
        res = measure(case)
        failed |= "error" in res
        rows.append(row(case, res))
        print(rows[-1], flush=True)
    model = MODEL_70B
    out = Path(args.out or REPO / "bench" / "results" / f"planning-{datetime.date.today().isoformat()}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document(rows, args, model, len(model_params(model))), encoding="utf-8")
    print(f"written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
