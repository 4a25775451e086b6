"""MindSpore as the byte-for-byte reference for every resharding path of mpitrans.

QUIRKS_PLACEHOLDER
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.layouts import Case, LayoutSpec, ParamSpec

__all__ = [
    "CaseFiles", "assert_same_tree", "build_case", "build_cases", "cache_root", "make_full_checkpoint",
    "mindspore_version", "read_checkpoint", "write_layout_strategy",
]

# Bump when the files a case produces change meaning, so stale cache entries are ignored.
ORACLE_FORMAT = 1
REPO = Path(__file__).resolve().parents[2]
PREFIX = "checkpoint_"
# Quiet MindSpore: GLOG_v=3 keeps only errors; one thread each since we run several workers at once.
QUIET_ENV = {"GLOG_v": "3", "GLOG_logtostderr": "1", "OMP_NUM_THREADS": "1", "MS_SUBMODULE_LOG_v": "{ME:3}",
             "PYTHONWARNINGS": "ignore"}


def mindspore_version() -> str:
    """Installed MindSpore version, read from package metadata so that mindspore is not imported."""
    from importlib.metadata import version

    return version("mindspore")


def cache_root() -> Path:
    """`$MPITRANS_ORACLE_CACHE`, else `<repo>/.pytest_cache/oracle` (else a temp dir if not writable)."""
    env = os.environ.get("MPITRANS_ORACLE_CACHE")
    root = Path(env) if env else REPO / ".pytest_cache" / "oracle"
    try:
        root.mkdir(parents=True, exist_ok=True)
        return root
    except OSError:
        fallback = Path(tempfile.gettempdir()) / "mpitrans-oracle"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def case_key(case: Case) -> str:
    """Cache key: the case's canonical form, the MindSpore version and this harness's format."""
    import hashlib

    blob = json.dumps({"case": case.to_json(), "ms": mindspore_version(), "fmt": ORACLE_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class CaseFiles:
    """Where a built case lives. Paths in the cache are shared: treat them as read-only, or pass a
    `workdir` to `build_case` for a private copy.

    `src_strategy` / `dst_strategy` are exactly what was passed to `mindspore.transform_checkpoints`
    (the merged file for a pipeline side; the single stage file when `case.src_stage` is set), None for a
    full side. `src_stage_dir` / `dst_stage_dir` hold the per-stage files of a pipeline side.
    `expected_files` lists MindSpore's outputs relative to `expected_dir`; `error` is
    ``"ExceptionType: message"`` when MindSpore refused the transform (then there are no outputs).
    `rank_lists[r]` is `mindspore.rank_list_for_transform(r, src_strategy, dst_strategy)` for every
    target rank (or the error string it raised). `by_rank_dir/rank_r/checkpoint_r.ckpt` is what
    `mindspore.transform_checkpoint_by_rank(r, {g: file of g for g in rank_lists[r]}, ...)` wrote, unless
    `by_rank_errors[r]` says why it failed.
    """

    root: Path
    case: Case
    full_dir: Path
    src_dir: Path
    src_strategy: Path | None
    src_stage_dir: Path | None
    dst_strategy: Path | None
    dst_stage_dir: Path | None
    expected_dir: Path
    expected_files: tuple[str, ...]
    error: str | None
    rank_lists: dict[int, list[int] | str]
    by_rank_dir: Path
    by_rank_errors: dict[int, str]
    build_seconds: float

    @classmethod
    def load(cls, root: Path, case: Case) -> CaseFiles:
        meta = json.loads((root / "meta.json").read_text())

        def opt(rel: str | None) -> Path | None:
            return None if rel is None else root / rel

        return cls(root, case, root / "full", root / meta["src_dir"], opt(meta["src_strategy"]),
                   opt(meta["src_stage_dir"]), opt(meta["dst_strategy"]), opt(meta["dst_stage_dir"]),
                   root / "expected", tuple(meta["expected_files"]), meta["error"],
                   {int(k): v for k, v in meta["rank_lists"].items()}, root / "by_rank",
                   {int(k): v for k, v in meta["by_rank_errors"].items()}, meta["build_seconds"])


# ---------------------------------------------------------------------------------------------------
# Reading checkpoints without MindSpore (a few lines of protobuf wire format), for diffs and tests.


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return out, pos


def _fields(buf: bytes) -> Iterable[tuple[int, int, bytes | int]]:
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
            yield num, wire, val
        elif wire == 2:
            n, pos = _varint(buf, pos)
            yield num, wire, buf[pos:pos + n]
            pos += n
        elif wire == 1:
            yield num, wire, buf[pos:pos + 8]
            pos += 8
        elif wire == 5:
            yield num, wire, buf[pos:pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire} at {pos}")


@dataclass(frozen=True)
class Record:
    """One `Checkpoint.value` entry: name, MindSpore dtype name, dims and raw little-endian bytes."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    data: bytes


def read_checkpoint(path: str | os.PathLike[str]) -> list[Record]:
    """The records of a `.ckpt` file in file order (MindSpore splits big tensors into several records
    with the same name; they are kept separate here, so a diff shows the split too)."""
    out = []
    for num, _w, value in _fields(Path(path).read_bytes()):
        if num != 1:
            raise ValueError(f"{path}: unexpected top-level field {num}")
        name, tensor = "", b""
        for n2, _w2, v2 in _fields(value):  # type: ignore[arg-type]
            if n2 == 1:
                name = v2.decode()  # type: ignore[union-attr]
            elif n2 == 2:
                tensor = v2  # type: ignore[assignment]
        dims: list[int] = []
        dtype, data = "", b""
        for n3, w3, v3 in _fields(tensor):
            if n3 == 1 and w3 == 0:
                dims.append(v3)  # type: ignore[arg-type]
            elif n3 == 1 and w3 == 2:
                p = 0
                while p < len(v3):  # type: ignore[arg-type]
                    d, p = _varint(v3, p)  # type: ignore[arg-type]
                    dims.append(d)
            elif n3 == 2:
                dtype = v3.decode()  # type: ignore[union-attr]
            elif n3 == 3:
                data = v3  # type: ignore[assignment]
        out.append(Record(name, dtype, tuple(dims), data))
    return out


def _tree(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def _describe(expected: Path, actual: Path) -> str:
    """The first way two checkpoint files differ, in parameter terms."""
    try:
        a, b = read_checkpoint(expected), read_checkpoint(actual)
    except Exception as e:  # noqa: BLE001 - a diff helper must not hide the mismatch behind a parse error
        return f"cannot parse ({e!r})"
    names_a, names_b = [r.name for r in a], [r.name for r in b]
    if names_a != names_b:
        return f"parameter order/set differs:\n      expected {names_a}\n      actual   {names_b}"
    for ra, rb in zip(a, b, strict=True):
        if (ra.dtype, ra.dims) != (rb.dtype, rb.dims):
            return f"{ra.name}: expected {ra.dtype}{list(ra.dims)}, got {rb.dtype}{list(rb.dims)}"
        if ra.data != rb.data:
            i = next(i for i, (x, y) in enumerate(zip(ra.data, rb.data, strict=False)) if x != y) \
                if len(ra.data) == len(rb.data) else min(len(ra.data), len(rb.data))
            return (f"{ra.name} ({ra.dtype}{list(ra.dims)}): data differs from byte {i} "
                    f"(sizes {len(ra.data)} / {len(rb.data)})")
    return "same records, different framing bytes"


def assert_same_tree(expected_dir: str | os.PathLike[str], actual_dir: str | os.PathLike[str]) -> None:
    """Assert both trees hold the same relative file names with identical bytes; on failure say which
    files are missing/extra and, for differing checkpoints, the first differing parameter."""
    exp, act = _tree(Path(expected_dir)), _tree(Path(actual_dir))
    problems = []
    if missing := sorted(set(exp) - set(act)):
        problems.append(f"missing files: {missing}")
    if extra := sorted(set(act) - set(exp)):
        problems.append(f"unexpected files: {extra}")
    for rel in sorted(set(exp) & set(act)):
        if exp[rel].read_bytes() != act[rel].read_bytes():
            problems.append(f"{rel}: {_describe(exp[rel], act[rel])}")
    if problems:
        raise AssertionError(f"{actual_dir} differs from MindSpore's {expected_dir}:\n  " + "\n  ".join(problems))


# ---------------------------------------------------------------------------------------------------
# Building (these functions import mindspore; the pytest process calls them through a worker).


def _param_array(spec: ParamSpec, seed: int):
    """Reproducible content: depends only on (seed, name, shape, dtype), never on other parameters."""
    import numpy as np

    rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
    shape = spec.shape
    if spec.dtype in ("float32", "float16", "float64", "bfloat16"):
        return rng.standard_normal(shape).astype("float64" if spec.dtype == "float64" else "float32")
    if spec.dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    lo, hi = {"int8": (-128, 128), "uint8": (0, 256), "int32": (-2**31, 2**31), "int64": (-2**62, 2**62)}[spec.dtype]
    return rng.integers(lo, hi, shape, dtype=spec.dtype)


def _tensor(array, dtype: str):
    import mindspore as ms

    if dtype == "bfloat16":
        return ms.Tensor(array, ms.bfloat16)
    if dtype == "float16":
        return ms.Tensor(array.astype("float16"))
    return ms.Tensor(array)


def make_full_checkpoint(path: str | os.PathLike[str], params: Sequence[ParamSpec], seed: int) -> None:
    """Save the full (unsharded) model with `mindspore.save_checkpoint`, parameters in the given order."""
    import mindspore as ms

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ms.save_checkpoint([{"name": p.name, "data": _tensor(_param_array(p, seed), p.dtype)} for p in params],
                       os.fspath(path))


def write_layout_strategy(path_or_dir: str | os.PathLike[str], layout: LayoutSpec, fmt: str = "pb") -> Path:
    """Write a side's strategy and return the file to hand to MindSpore.

    One stage: `path_or_dir` is the file. Pipeline: `path_or_dir` is a directory that receives the
    per-stage files (``stages/ckpt_strategy_rank_{first rank}.ckpt``, as training leaves them) and the
    merged ``merged.ckpt`` that `mindspore.merge_pipeline_strategys` builds from them (returned).
    """
    import mindspore as ms

    from tests.support.strategies import write_pipeline_stage_files, write_strategy_file

    specs = [{n: lay.to_strategy_spec() for n, lay in st} for st in layout.stages]
    ext = ".ckpt" if fmt == "pb" else ".json"
    if layout.num_stages == 1:
        path = Path(path_or_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_strategy_file(path, specs[0], stage=0, fmt=fmt)
        return path
    d = Path(path_or_dir)
    write_pipeline_stage_files(d / "stages", specs, fmt=fmt, stage_device_num=layout.stage_device_num)
    merged = d / f"merged{ext}"
    ms.merge_pipeline_strategys(os.fspath(d / "stages"), os.fspath(merged))
    return merged


def _stage_file(stage_dir: Path, layout: LayoutSpec, stage: int, fmt: str) -> Path:
    ext = ".ckpt" if fmt == "pb" else ".json"
    return stage_dir / f"ckpt_strategy_rank_{stage * layout.stage_device_num}{ext}"


def _perturb_extras(src_dir: Path, names: set[str]) -> None:
    """Give each source rank its own value of the strategy-less parameters (file order and every other
    byte unchanged), so outputs reveal which rank MindSpore copied them from."""
    import mindspore as ms
    import numpy as np

    for rank_dir in sorted(src_dir.glob("rank_*")):
        rank = int(rank_dir.name.split("_")[1])
        for f in sorted(rank_dir.glob("*.ckpt")):
            items = []
            for name, param in ms.load_checkpoint(os.fspath(f)).items():
                data = param.data
                if name in names:
                    if data.dtype == ms.bfloat16:
                        arr = data.float().asnumpy() + (rank + 1)
                        data = ms.Tensor(arr, ms.bfloat16)
                    else:
                        arr = data.asnumpy()
                        if arr.dtype == np.bool_:
                            arr = arr ^ bool(rank % 2)
                        else:
                            arr = (arr + (rank + 1)).astype(arr.dtype)
                        data = ms.Tensor(arr)
                items.append({"name": name, "data": data})
            ms.save_checkpoint(items, os.fspath(f))


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _build_into(case: Case, root: Path) -> dict:
    """Build every file of `case` under `root` and return its meta (run inside a worker)."""
    import mindspore as ms

    t0 = time.perf_counter()
    full = root / "full"
    make_full_checkpoint(full / "rank_0" / "full.ckpt", case.params, case.seed)
    meta: dict = {"case": case.to_json(), "label": case.label, "ms_version": ms.__version__,
                  "src_strategy": None, "src_stage_dir": None, "dst_strategy": None, "dst_stage_dir": None}
    src_arg = dst_arg = None
    ext = ".ckpt" if case.fmt == "pb" else ".json"
    if case.src is None:
        meta["src_dir"] = "full"
    else:
        merged = write_layout_strategy(root / ("src_strategy" if case.src.num_stages > 1 else "src_strategy" + ext),
                                       case.src, case.fmt)
        src_arg = merged
        if case.src.num_stages > 1:
            meta["src_stage_dir"] = "src_strategy/stages"
            if case.src_stage is not None:
                src_arg = _stage_file(root / "src_strategy" / "stages", case.src, case.src_stage, case.fmt)
        meta["src_dir"] = "src"
        # The source shards are MindSpore's own split of the full checkpoint (all stages of a pipeline).
        ms.transform_checkpoints(os.fspath(full), os.fspath(root / "src"), PREFIX, None, os.fspath(merged))
        if case.distinct_extras:
            _perturb_extras(root / "src", {p.name for p in case.params} - case.src.names())
        meta["src_strategy"] = str(src_arg.relative_to(root))
    if case.dst is not None:
        dst_arg = write_layout_strategy(root / ("dst_strategy" if case.dst.num_stages > 1 else "dst_strategy" + ext),
                                        case.dst, case.fmt)
        meta["dst_strategy"] = str(dst_arg.relative_to(root))
        if case.dst.num_stages > 1:
            meta["dst_stage_dir"] = "dst_strategy/stages"
    src_s = None if src_arg is None else os.fspath(src_arg)
    dst_s = None if dst_arg is None else os.fspath(dst_arg)
    t1 = time.perf_counter()
    try:
        ms.transform_checkpoints(os.fspath(root / meta["src_dir"]), os.fspath(root / "expected"), PREFIX,
                                 src_s, dst_s)
        meta["error"] = None
    except Exception as e:  # noqa: BLE001 - MindSpore's refusal is part of the reference behaviour
        meta["error"] = _err(e)
        shutil.rmtree(root / "expected", ignore_errors=True)
        (root / "expected").mkdir()
    t2 = time.perf_counter()
    meta["expected_files"] = sorted(str(p.relative_to(root / "expected"))
                                    for p in (root / "expected").rglob("*") if p.is_file())
    n_dst = case.dst.device_num if case.dst is not None else 1
    rank_lists: dict[str, list[int] | str] = {}
    by_rank_errors: dict[str, str] = {}
    src_files = {int(d.name.split("_")[1]): sorted(d.glob("*.ckpt"))[-1]
                 for d in (root / meta["src_dir"]).glob("rank_*")}
    for r in range(n_dst):
        try:
            needed = [int(x) for x in ms.rank_list_for_transform(r, src_s, dst_s)]
        except Exception as e:  # noqa: BLE001
            rank_lists[str(r)] = by_rank_errors[str(r)] = _err(e)
            continue
        rank_lists[str(r)] = needed
        # transform_checkpoint_by_rank, fed the way MindSpore's docstring does: the files of the rank list,
        # in its (descending) order.
        out = root / "by_rank" / f"rank_{r}" / f"{PREFIX}{r}.ckpt"
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            ms.transform_checkpoint_by_rank(r, {g: os.fspath(src_files[g]) for g in needed}, os.fspath(out),
                                            src_s, dst_s)
        except Exception as e:  # noqa: BLE001
            by_rank_errors[str(r)] = _err(e)
    meta["rank_lists"] = rank_lists
    meta["by_rank_errors"] = by_rank_errors
    meta["build_seconds"] = round(time.perf_counter() - t0, 3)
    meta["transform_seconds"] = round(t2 - t1, 3)
    return meta


def _finalize(tmp: Path, final: Path) -> None:
    """Atomically publish a built case; if another process won the race, keep theirs."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "meta.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _worker(job_file: str) -> int:
    """Subprocess entry: build each (case, cache dir) of the job file into the cache."""
    jobs = json.loads(Path(job_file).read_text())
    failures = 0
    for job in jobs:
        case = Case.from_json(job["case"], job.get("label", ""))
        final = Path(job["final"])
        if (final / "meta.json").exists():
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        try:
            meta = _build_into(case, tmp)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            _finalize(tmp, final)
        except Exception:  # noqa: BLE001 - report and go on with the other cases
            failures += 1
            print(f"oracle: building {case.label or final.name} failed:\n{traceback.format_exc()}", file=sys.stderr)
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


def _run_workers(chunks: list[list[dict]], timeout: float) -> None:
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = []
    with tempfile.TemporaryDirectory(prefix="oracle-jobs-") as td:
        for i, chunk in enumerate(chunks):
            jf = Path(td) / f"jobs{i}.json"
            jf.write_text(json.dumps(chunk))
            log = open(Path(td) / f"log{i}.txt", "w+b")  # noqa: SIM115 - closed below
            p = subprocess.Popen([sys.executable, "-m", "tests.support.oracle", os.fspath(jf)], cwd=REPO, env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
            procs.append((p, log))
        errors = []
        deadline = time.monotonic() + timeout
        for p, log in procs:
            try:
                rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
            log.seek(0)
            text = log.read().decode(errors="replace")
            log.close()
            if rc:
                errors.append(f"worker exited {rc}:\n{text[-4000:]}")
        if errors:
            raise RuntimeError("oracle build failed:\n" + "\n".join(errors))


def _sweep_stale(root: Path, age: float = 3600) -> None:
    """Remove half-built entries left by killed workers (live builders finish well within `age`)."""
    now = time.time()
    for d in root.glob(".tmp-*"):
        try:
            if now - d.stat().st_mtime > age:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def build_cases(cases: Sequence[Case], jobs: int | None = None, timeout: float = 1800) -> list[CaseFiles]:
    """Build (or reuse from the cache) every case, spreading the missing ones over `jobs` worker
    processes (default: CPU count); returns their CaseFiles in order."""
    root = cache_root()
    _sweep_stale(root)
    finals = [root / case_key(c) for c in cases]
    todo = []
    seen = set()
    for c, f in zip(cases, finals, strict=True):
        if not (f / "meta.json").exists() and f not in seen:
            seen.add(f)
            todo.append({"case": c.to_json(), "label": c.label, "final": os.fspath(f)})
    if todo:
        n = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
        _run_workers([todo[i::n] for i in range(n)], timeout)
    return [CaseFiles.load(f, c) for c, f in zip(cases, finals, strict=True)]


def build_case(case: Case, workdir: str | os.PathLike[str] | None = None) -> CaseFiles:
    """Build one case (cached). With `workdir`, copy the result there and return paths to the copy,
    which the caller may modify freely."""
    files = build_cases([case], jobs=1)[0]
    if workdir is None:
        return files
    dest = Path(workdir)
    # copyfile, not copy2: MindSpore leaves its checkpoints read-only (0o400); the copy should be writable.
    shutil.copytree(files.root, dest, dirs_exist_ok=True, copy_function=shutil.copyfile)
    return CaseFiles.load(dest, case)


def extras_of(case: Case) -> set[str]:
    """Parameters of `case` that no strategy mentions (MindSpore copies them from one source rank)."""
    return {p.name for p in case.params} - case.strategy_names()


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
