"""MindSpore as the byte-for-byte reference for every resharding path of mpitrans.

`build_case(case)` / `build_cases(cases)` turn a `tests.support.layouts.Case` into files: the full
checkpoint (`mindspore.save_checkpoint`), the strategy files (via `mpitrans.fixtures.strategies`, merged by
`mindspore.merge_pipeline_strategys` for a pipeline side), the source shards (MindSpore's own split of
the full checkpoint), and MindSpore's answer: `transform_checkpoints(src -> dst, "checkpoint_")` into
`expected/`, `rank_list_for_transform` for every target rank and `transform_checkpoint_by_rank` outputs.
MindSpore runs in worker subprocesses (GLOG_v=3, one per CPU); results are cached under
`$MPITRANS_ORACLE_CACHE` (default `<repo>/.pytest_cache/oracle`), keyed by the case, the MindSpore
version and `ORACLE_FORMAT`, built in a temp dir and renamed into place so racing pytest processes are
safe. `assert_same_tree(expected, actual)` compares trees byte for byte and names the first differing
parameter. Cost on the 2-core dev box: ~4 s to import MindSpore per worker, then 0.1-3 s per case
(median 0.4 s); 40 random cases take ~25 s cold, 0.1 s cached.

What MindSpore 2.10's `transform_checkpoints` does (checkpoint format, "ckpt" in and out); each point
is pinned by `test_oracle_selfcheck.py` or was established with the cases in `layouts.catalog()` /
`layouts.rejected_catalog()` and 300+ random cases checked against a naive reading of the layouts.

Files
- Output: `dst/rank_{r}/{prefix}{r}.ckpt` for every target rank r (global rank for a pipeline target,
  `r = stage * devices_per_stage + local`). Single-stage path (below): `dst/rank_{l}/{prefix}{l}_part{s}.ckpt`
  for the target's local ranks l only. Files are mode 0o400, created directories 0o700.
- A file is a concatenation of one-record `Checkpoint` messages: Value{tag, TensorProto{dims as unpacked
  varint fields (proto2; none for a 0-d tensor), tensor_type ("Float32", "BFloat16", ...), raw bytes}}.
  Nothing else: no CRC (crc_check defaults to False), no metadata, no header. A record over 512 MiB is
  split into several records of the same name (not exercised here). requires_grad/layerwise_parallel are
  not stored, so they cannot affect bytes.
- Source: `src/rank_<digits>/*.ckpt`; with several files in a rank directory the lexicographically last is
  used; other entries are ignored.

Parameter order in an output file
- Names in first-seen order over the source files MindSpore loaded, in load order. The normal path loads
  the target rank's `rank_list_for_transform` list, i.e. in DESCENDING rank order, so for a pipeline
  source the last stage's parameters come first; the single-stage path loads the stage's ranks ascending.
- Within that order, the parameters it transformed (named by the source strategy if given AND by the
  target stage's strategy if given) come first; everything else - strategy-less extras (global_step,
  learning_rate, ...) and names only one strategy knows - follows, so extras interleaved in the source
  move to the end. Names of other target pipeline stages are dropped; strategy-less names go to every
  stage's files.

Where untransformed parameters come from
- Copied unchanged from ONE source rank: with M source devices per stage and target local rank l, the
  lowest-numbered loaded rank g with g % M == l % M (a later-loaded, lower rank overwrites; for a
  pipeline source that is the lowest stage holding it); single-stage path: rank s * M + l % M. That
  rank is always among the loaded ones (the rank list contains l % M for every transformed parameter),
  so extras never crash MindSpore by themselves.
- A name the TARGET strategy lacks but the source strategy shards is copied as the raw source SHARD of
  that rank (its source shape). A name the SOURCE strategy lacks is copied as stored (whole).

Dtypes
- float32, float16, bfloat16, int32, int8, int64, float64, bool, uint8 all come out bit-exact. bfloat16
  goes through float32 and back, which is lossless; nothing else is converted.

Layouts accepted (output equal to the naive reading of the target layout unless noted)
- dp/mp device matrices of any order, size-1 axes, 3- and 6-device stages; any pair of stage device
  counts where one divides the other (3 -> 6, 6 -> 2, 8 -> 1, full -> 3 ...).
- Optimizer sharding: opt_weight_shard_size -1 or k, with the step MindSpore's training writes
  (`mpitrans.fixtures.layouts.opt_shard_fields`), on either side.
- Multi-axis tensor maps (several TensorMap messages; one dimension split by several device axes,
  most significant axis first), with or without optimizer sharding.
- Pipeline source (merged strategy), pipeline target (merged strategy), both, different stage counts,
  parameters shared by two stages (the source reads the lowest stage's layout and, the lowest loaded
  rank winning, that stage's data; a target rank of stage 0 takes stage 0's entry, a rank of another
  stage the LAST entry with a stage > 0 in merged-file order - `merge_pipeline_strategys` merges in
  `glob` order - which is its own stage's when only stage 0 and one other share the name).
- Full source (no src strategy; `rank_list_for_transform` is then `[0]`) and full target.
- JSON strategies (flat tensor maps only); outputs identical to the protobuf ones.
- Single-stage path (`_transform_checkpoint_by_stage`): taken whenever both strategies are given, neither
  has "{stage}-" prefixes, and the source's non-optimizer names (not starting with accu_grads/adam_v/
  adam_m) are a strict subset of the target's - i.e. one stage's own strategy file as source and a
  whole-model target, but also a plain source strategy that merely lacks a name (then `_part0`). The
  stage comes from the file's first strategy item; only that stage's source ranks are read.

Rejected (error, no output; training can produce all of these but the first)
- full -> full: "None of the parameters in checkpoint file are in either src strategy or dst strategy"
  (every parameter is dropped as "not in the local stage").
- Stage device counts neither dividing the other (3 -> 2, 6 -> 4): "Cannot transform device_num from
  M to N", even when every parameter is replicated.
- Optimizer sharding that needs part of a replica axis not divisible by it, e.g. size 2 over replica
  axes (2, 3): "dev_matrix value 3 at dim 1 cannot be divided by needed opt sharding size 2"
  (`mpitrans.fixtures.layouts.opt_shard_transformable` restates the rule).
- Pipeline target with ONE device per stage from a sharded source: `rank_list_for_transform` uses the
  global rank as the local one, so either "The checkpoint of rank 0 is missing." or the C++ error
  "Rank 2 is not in the current stage!" (works from a full source, or by luck when the list happens to
  contain rank 0).
- A single non-zero stage's file as source with no target strategy: it is read as stage 0's ranks, finds
  none of its names there: "None of the parameters ...". (Stage 0's file works.)
- Parameter names containing "-" in a strategy: "invalid literal for int()" / "too many values to unpack"
  (the "-" is taken as the pipeline-stage separator).

Gets wrong (self-consistent, but disagrees with what the layout means to training)
- Optimizer-sharded layouts on MindSpore's "simple path" (the only replica axis is the first device axis,
  or every axis is a replica axis) whose split axes are not in decreasing order along the tensor
  (e.g. dev (4, 2, 2), tensor map (0, 1)): it rebuilds the device matrix from the tensor strategy in
  tensor-dimension order and assigns the model-parallel slices to the wrong ranks (case
  `opt_swapped_axes`; `layouts.mindspore_misplaces` is the exact predicate, checked on 70 targeted
  layouts). It reads a SOURCE in such a layout the same wrong way: shards it made itself (as here) come
  back right, a real training checkpoint would not; only a TARGET layout shows it in these cases.
- The raw-shard copy for names the target strategy lacks (above).

`rank_list_for_transform(r, src, dst)`: sorted DESCENDING, without duplicates, elements numpy.int64
(plain `[0]` when src is None); the union over the source stages holding the target stage's
parameters, of stage start + the local ranks its all-gathers touch. `transform_checkpoint_by_rank`, fed
those files in that order, writes exactly the `transform_checkpoints` file for every normal-path case.
"""

from __future__ import annotations

import functools
import hashlib
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
    "PREFIX", "CaseFiles", "Record", "assert_same_tree", "build_case", "build_cases", "cache_root",
    "case_key", "extras_of", "make_full_checkpoint", "mindspore_version", "read_checkpoint",
    "write_layout_strategy",
]

# Bump when the files a case produces change meaning, so stale cache entries are ignored.
ORACLE_FORMAT = 2
REPO = Path(__file__).resolve().parents[2]
PREFIX = "checkpoint_"
# Quiet MindSpore: GLOG_v=3 keeps only errors; one thread each since we run several workers at once.
QUIET_ENV = {"GLOG_v": "3", "GLOG_logtostderr": "1", "OMP_NUM_THREADS": "1", "MS_SUBMODULE_LOG_v": "{ME:3}",
             "PYTHONWARNINGS": "ignore"}


@functools.cache
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
    blob = json.dumps({"case": case.to_json(), "ms": mindspore_version(), "fmt": ORACLE_FORMAT},
                      sort_keys=True)
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
            n = 1
            for d in ra.dims:
                n *= d
            item = len(ra.data) // n if n else 1
            return (f"{ra.name} ({ra.dtype}{list(ra.dims)}): data differs from flat element {i // item} "
                    f"(byte {i}; sizes {len(ra.data)} / {len(rb.data)})")
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
        raise AssertionError(f"{actual_dir} differs from MindSpore's {expected_dir}:\n  "
                             + "\n  ".join(problems))


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
    bounds = {"int8": (-128, 128), "uint8": (0, 256), "int32": (-2**31, 2**31), "int64": (-2**62, 2**62)}
    lo, hi = bounds[spec.dtype]
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

    from mpitrans.fixtures.strategies import write_pipeline_stage_files, write_strategy_file

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
        where = root / ("src_strategy" if case.src.num_stages > 1 else "src_strategy" + ext)
        merged = write_layout_strategy(where, case.src, case.fmt)
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
        where = root / ("dst_strategy" if case.dst.num_stages > 1 else "dst_strategy" + ext)
        dst_arg = write_layout_strategy(where, case.dst, case.fmt)
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
        if case.src_stage is not None:  # by-rank has no single-stage path; its output would mean nothing
            continue
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
            print(f"oracle: building {case.label or final.name} failed:\n{traceback.format_exc()}",
                  file=sys.stderr)
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


def run_oracle_module(module: str, job_file: Path, job: object, timeout: float = 600) -> None:
    """Write `job` as JSON to `job_file` and run `python -m module job_file` (a MindSpore oracle) quietly,
    with this repository importable; a failure raises."""
    job_file.write_text(json.dumps(job))
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", module, str(job_file)], check=True, env=env, cwd=REPO, timeout=timeout)


def _run_workers(chunks: list[list[dict]], timeout: float) -> None:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": path}
    procs = []
    with tempfile.TemporaryDirectory(prefix="oracle-jobs-") as td:
        for i, chunk in enumerate(chunks):
            jf = Path(td) / f"jobs{i}.json"
            jf.write_text(json.dumps(chunk))
            log = open(Path(td) / f"log{i}.txt", "w+b")  # noqa: SIM115 - closed below
            p = subprocess.Popen([sys.executable, "-m", "tests.support.oracle", os.fspath(jf)], cwd=REPO,
                                 env=env, stdout=log, stderr=subprocess.STDOUT)
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
