"""The consistency pass: source files against the strategy and each other, before any byte moves.

Unit tests call `check_sources` on made-up metadata (no MPI, no files); the end-to-end tests break one
rank's file of the quickstart example and run the command line under mpirun and without it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mpitrans.metadata import TensorMeta
from mpitrans.plan.consistency import InconsistentSourceError, check_sources, probe_ranks, source_scope
from mpitrans.strategy.model import RawLayout, StrategyFile
from tests.support.mpirun import mpirun, single

# -- unit: a dp2 x mp2 model (4 devices) ---------------------------------------------------------------


def lay(dev, tmap, **kw) -> RawLayout:
    return RawLayout(dev_matrix=tuple(dev), tensor_map=(tuple(tmap),), **kw)


def strategy(layouts: dict[str, RawLayout], stage: int = 0, source: str = "s.ckpt") -> StrategyFile:
    return StrategyFile(layouts=list(layouts.items()), strategy_items=[("net", stage, ((1,),))], source=source)


SRC = strategy({"w": lay((2, 2), (0, -1)), "b": lay((2, 2), (-1,)), "adam_m.w": lay((2, 2), (0, -1))})


def files(n: int = 4, **override) -> dict[int, list[TensorMeta]]:
    """Rank -> tensors of a consistent 4-rank source (w: (8, 8) split in rows by 2; b replicated; step
    not in the strategy; adam_m.w in the strategy but saved by no rank). `override[f"r{g}"]` replaces
    rank g's list."""
    out = {}
    for g in range(n):
        out[g] = [TensorMeta("w", "float32", (4, 8)), TensorMeta("b", "float32", (8,)),
                  TensorMeta("step", "int32", (1,))]
    for key, tensors in override.items():
        out[int(key[1:])] = tensors
    return out


def paths(metas) -> dict[int, str]:
    return {g: f"/src/rank_{g}/m{g}.ckpt" for g in metas}


def check(metas, src=SRC, dst=None, visible=None):
    return check_sources(src, dst, metas, paths(metas), sorted(visible if visible is not None else metas), "/src")


def refused(metas, *words, **kw) -> str:
    with pytest.raises(InconsistentSourceError) as err:
        check(metas, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    for word in words:
        assert word in msg, msg
    return msg


def with_tensor(g: int, name: str, dtype: str | None = None, shape=None, drop: bool = False):
    base = files()[g]
    out = []
    for m in base:
        if m.name != name:
            out.append(m)
        elif not drop:
            out.append(TensorMeta(name, dtype or m.dtype, tuple(shape) if shape is not None else m.shape))
    return {f"r{g}": out}


def test_consistent_sources_pass_and_strategy_parameters_nobody_saved_are_fine():
    metas = files()
    assert check(metas) == metas  # adam_m.w is in the strategy but in no file: saved without optimizer states


@pytest.mark.parametrize("shape, words", [
    ((2, 8), ["rank_3 (/src/rank_3/m3.ckpt): parameter 'w' has shape (2, 8); the strategy implies (4, 8)"]),
    ((8, 4), ["has shape (8, 4); the strategy implies (4, 8)"]),
    ((4, 8, 1), ["has shape (4, 8, 1); the strategy's tensor map [0, -1] gives it 2 dimension(s)"]),
])
def test_shard_shape_against_the_strategy(shape, words):
    refused(files(**with_tensor(3, "w", shape=shape)), *words)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_dtype_must_agree_across_files(dtype):
    refused(files(**with_tensor(2, "w", dtype=dtype)), "rank_2 (/src/rank_2/m2.ckpt)", f"'w' has dtype {dtype}",
            "rank_0 (/src/rank_0/m0.ckpt)", "float32")


def test_missing_strategy_parameter_in_one_file():
    # Another file holds the same slice (b is replicated): a de-duplicated source, saved with
    # remove_redundancy; the planner reads b from that replica.
    assert check(files(**with_tensor(1, "b", drop=True)))
    # Rows 4-7 of w are held by ranks 1 and 3 only: with both lacking w, that slice is nowhere.
    metas = files(**with_tensor(1, "w", drop=True), **with_tensor(3, "w", drop=True))
    refused(metas, "rank_1 (/src/rank_1/m1.ckpt): parameter 'w' is missing", "rank_0 (/src/rank_0/m0.ckpt) holds it",
            "searched rank_0..rank_3")


def test_file_of_another_model():
    other = [TensorMeta("enc.w", "float32", (3, 3)), TensorMeta("step", "int32", (1,))]
    refused(files(r2=other), "rank_2 (/src/rank_2/m2.ckpt) holds none of", "another model")


def test_parameter_absent_from_the_strategy_must_be_where_targets_copy_it_from():
    extra = TensorMeta("only_here", "float32", (2,))
    # Full target: MindSpore copies it from local rank 0 only.
    assert check(files(r0=[*files()[0], extra]))
    msg = refused(files(r3=[*files()[3], extra]), "rank_0 (/src/rank_0/m0.ckpt): parameter 'only_here' is missing",
                  "rank_3 (/src/rank_3/m3.ckpt) holds it")
    # Two target devices copy from local ranks 0 and 1.
    dst = strategy({"w": lay((2,), (0, -1)), "b": lay((2,), (-1,))}, source="d.ckpt")
    refused(files(r0=[*files()[0], extra]), "rank_1 (/src/rank_1/m1.ckpt): parameter 'only_here'", dst=dst)
    assert "Traceback" not in msg


def test_parameter_absent_from_the_strategy_keeps_one_shape():
    refused(files(**with_tensor(2, "step", shape=(2,))), "rank_2", "'step' has shape (2,); the other source "
            "files hold (1,)")


def test_strategy_over_more_rank_dirs_holding_the_same_parameters():
    metas = files(8)  # the 8 files of a larger layout, read with a 4-device strategy
    scope = source_scope(SRC, None)
    assert probe_ranks(scope, range(8)) == {4, 0}
    probe = {g: metas[g] for g in (0, 1, 2, 3, 4)}
    refused(probe, "the source strategy s.ckpt describes 4 device(s) (rank_0..rank_3)", "rank_4..rank_7",
            "rank_4 (/src/rank_4/m4.ckpt) holds the same parameters as rank_0", visible=range(8))


def test_other_pipeline_stages_beyond_a_single_stage_strategy_are_ignored():
    """Stage 0's own strategy over all stages' rank dirs: the others hold other parameters."""
    metas = files()
    metas[4] = [TensorMeta("w2", "float32", (4, 8)), TensorMeta("step", "int32", (1,))]
    assert check(metas, visible=range(8)) == files()  # rank_4 is not the job's: dropped, never a replica


def test_nothing_beyond_a_merged_pipeline_strategy():
    src = strategy({"0-w": lay((2,), (0, -1)), "1-v": lay((2,), (0, -1)), "1-u": lay((2,), (-1,))})
    stage0 = [TensorMeta("w", "float32", (4, 8)), TensorMeta("step", "int32", (1,))]
    stage1 = [TensorMeta("v", "float32", (4, 8)), TensorMeta("u", "float32", (8,)), TensorMeta("step", "int32", (1,))]
    metas = {0: stage0, 1: stage0, 2: stage1, 3: stage1}
    assert check(metas, src=src) == metas
    refused(metas, "describes 4 devices (2 pipeline stages of 2: rank_0..rank_3)", "rank_4", src=src,
            visible=range(5))
    refused({**metas, 3: stage1[1:]}, "rank_3 (/src/rank_3/m3.ckpt): parameter 'v' is missing", src=src)


def test_a_shared_parameter_is_checked_against_its_own_stage_layout():
    """A tied embedding split by rows in stage 0 and by columns in stage 1: both shard shapes are right."""
    src = strategy({"0-emb": lay((2,), (0, -1)), "1-emb": lay((2,), (-1, 0))})
    metas = {0: [TensorMeta("emb", "float32", (4, 8))], 1: [TensorMeta("emb", "float32", (4, 8))],
             2: [TensorMeta("emb", "float32", (8, 4))], 3: [TensorMeta("emb", "float32", (8, 4))]}
    assert check(metas, src=src) == metas
    metas[3] = [TensorMeta("emb", "float32", (4, 8))]
    refused(metas, "rank_3", "'emb' has shape (4, 8); the strategy implies (8, 4)", src=src)


def test_one_stage_strategy_against_a_whole_model_reads_that_stage_only():
    src = strategy({"v": lay((2,), (0, -1))}, stage=1)
    dst = strategy({"w": lay((2,), (0, -1)), "v": lay((2,), (0, -1))}, source="d.ckpt")
    stage0 = [TensorMeta("w", "float32", (4, 8))]
    stage1 = [TensorMeta("v", "float32", (4, 8))]
    metas = {0: stage0, 1: stage0, 2: stage1, 3: stage1}
    assert source_scope(src, dst).by_stage
    assert probe_ranks(source_scope(src, dst), range(4)) == set()
    assert check(metas, src=src, dst=dst) == {2: stage1, 3: stage1}


def test_without_strategies():
    one = {0: files()[0]}
    refused(one, "no source or destination strategy was given: /src is already one full checkpoint", src=None)
    refused(files(), "would be read as one full checkpoint (rank_0), but it holds rank_0..rank_3", src=None)
    dst = strategy({"w": lay((2,), (0, -1))}, source="d.ckpt")
    assert check(one, src=None, dst=dst) == one
    refused({0: files()[0], 1: files()[1]}, "no source strategy was given", "rank_1 (/src/rank_1/m1.ckpt) holds the "
            "same parameters as rank_0", src=None, dst=dst, visible=[0, 1])


# -- end to end: break one file of the quickstart example ----------------------------------------------

WQ = "model.layers.0.attention.wq.weight"


def _tensors(path: Path) -> list[list]:
    from mpitrans.storage.ckpt import index_checkpoint, read_box

    return [[e.name, e.dtype, tuple(e.shape), bytes(read_box(str(path), e, tuple((0, s) for s in e.shape)))]
            for e in index_checkpoint(str(path)).entries]


def _rewrite(path: Path, tensors: list[list]) -> None:
    from mpitrans.storage.ckpt import CheckpointWriter

    path.unlink()
    with CheckpointWriter(str(path)) as w:
        for name, dtype, shape, data in tensors:
            w.write_tensor(name, dtype, shape, data)


def _break(src: Path, problem: str) -> list[str]:
    """Damage the copy `src` as `problem` says; return words the error must contain."""
    victim = next((src / "rank_3").glob("*.ckpt"))
    tensors = _tensors(victim)
    where = ["rank_3", str(victim)]
    for t in tensors:
        if t[0] != WQ:
            continue
        if problem == "smaller-first-dim":
            t[2], t[3] = (t[2][0] // 2, *t[2][1:]), t[3][: len(t[3]) // 2]
            words = [*where, WQ, "has shape (16, 128); the strategy implies (32, 128)"]
        elif problem == "transposed":
            t[2] = tuple(reversed(t[2]))
            words = [*where, WQ, "has shape (128, 32); the strategy implies (32, 128)"]
        elif problem == "dtype-other-size":
            import numpy as np

            t[1], t[3] = "Float32", (np.frombuffer(t[3], np.uint16).astype(np.uint32) << 16).tobytes()
            words = [*where, WQ, "dtype float32", "bfloat16"]
        elif problem == "dtype-same-size":
            t[1] = "Float16"
            words = [*where, WQ, "dtype float16", "bfloat16"]
    if problem == "missing-parameter":
        # Gone from rank 3 and from rank 7, its replica (dp2 x mp4): no file holds that slice.
        tensors = [t for t in tensors if t[0] != WQ]
        twin = next((src / "rank_7").glob("*.ckpt"))
        _rewrite(twin, [t for t in _tensors(twin) if t[0] != WQ])
        words = [*where, WQ, "is missing", "searched rank_0..rank_7"]
    elif problem == "another-model":
        tensors = [["encoder.weight", "Float32", (8, 4), bytes(128)], ["global_step", "Int32", (1,), bytes(4)]]
        words = [*where, "another model"]
    elif problem == "in-one-file-only":
        tensors.append(["model.only_here.weight", "Float32", (4,), bytes(16)])
        words = ["rank_0", "model.only_here.weight", "is missing", *where]
    _rewrite(victim, tensors)
    return words


FILE_PROBLEMS = ["smaller-first-dim", "transposed", "dtype-other-size", "dtype-same-size", "missing-parameter",
                 "another-model", "in-one-file-only"]
LAUNCHERS = [pytest.param("mpirun", marks=pytest.mark.mpi), "single"]


def _run(launcher: str, args: list[str]) -> subprocess.CompletedProcess:
    return mpirun(2, args, timeout=90) if launcher == "mpirun" else single(args, timeout=90)


def _assert_clean_failure(proc: subprocess.CompletedProcess, dst: Path, words: list[str]) -> None:
    assert proc.returncode != 0, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("mpitrans: error") == 1, proc.stderr
    assert not dst.exists(), "nothing may be written"


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("problem", FILE_PROBLEMS)
def test_inconsistent_source_file_fails_before_any_byte_moves(example, tmp_path, launcher, problem):
    src = tmp_path / "src"
    shutil.copytree(example / "src", src)
    words = _break(src, problem)
    dst = tmp_path / "dst"
    proc = _run(launcher, ["--src-checkpoint", str(src), "--src-strategy", str(example / "src_strategy.ckpt"),
                           "--dst-checkpoint", str(dst), "--dst-strategy", str(example / "dst_strategy.ckpt"),
                           "--quiet"])
    _assert_clean_failure(proc, dst, words)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_parameter_missing_from_one_replica_is_read_from_the_other(example, tmp_path, launcher):
    """A de-duplicated source (remove_redundancy) leaves a slice in one replica only: read it there."""
    src = tmp_path / "src"
    shutil.copytree(example / "src", src)
    victim = next((src / "rank_3").glob("*.ckpt"))
    _rewrite(victim, [t for t in _tensors(victim) if t[0] != WQ])
    dst = tmp_path / "dst"
    proc = _run(launcher, ["--src-checkpoint", str(src), "--src-strategy", str(example / "src_strategy.ckpt"),
                           "--dst-checkpoint", str(dst), "--dst-strategy", str(example / "dst_strategy.ckpt"),
                           "--quiet"])
    assert proc.returncode == 0, proc.stderr
    for want in (example / "expected").rglob("*.ckpt"):
        assert (dst / want.relative_to(example / "expected")).read_bytes() == want.read_bytes(), want


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("problem", ["4-device-strategy-over-8-ranks", "no-strategies"])
def test_rank_dirs_against_the_strategies(example, tmp_path, launcher, problem):
    dst = tmp_path / "dst"
    if problem == "4-device-strategy-over-8-ranks":  # MindSpore writes (64, 128) where (128, 128) was saved
        args = ["--src-checkpoint", str(example / "src"), "--src-strategy", str(example / "dst_strategy.ckpt")]
        words = ["dst_strategy.ckpt describes 4 device(s) (rank_0..rank_3)", "rank_4..rank_7", "another strategy"]
    else:
        args = ["--src-checkpoint", str(example / "full_dir")]
        words = ["no source or destination strategy was given", "nothing to reshard"]
    proc = _run(launcher, [*args, "--dst-checkpoint", str(dst), "--quiet"])
    _assert_clean_failure(proc, dst, words)
    assert "none of the parameters" not in proc.stderr and "different models" not in proc.stderr
