"""De-duplicated sources (`remove_redundancy`) against MindSpore's transform of the full-redundancy save.

Each case's shards are saved again the way `ModelCheckpoint(remove_redundancy=True)` saves them
(`tests/support/dedup.py`: MindSpore's own `get_parameter_redundancy` / `remove_param_redundancy` and
`save_checkpoint(choice_func=..., remove_redundancy=True)`), so each data-parallel replica holds a different
subset. mpitrans resharding that must write exactly the files MindSpore's `transform_checkpoints` writes
from the shards *with* redundancy: every parameter, read from whichever replica kept it, in MindSpore's
order. MindSpore's own transform of the de-duplicated source leaves parameters out.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import mpitrans
from mpitrans.errors import MpitransError
from tests.support.dedup import assignment, write_dedup
from tests.support.layouts import MODEL, Case, _with_adam, dp_mp, pipeline, random_case
from tests.support.mpirun import HOST_WRAPPER, REPO, mpirun, mpirun_script
from tests.support.oracle import assert_same_tree, build_cases, read_checkpoint

ms = pytest.importorskip("mindspore")

MA = _with_adam(MODEL)
# MindSpore's safetensors code cannot hold bfloat16 here (see test_safetensors_differential.py).
M32 = tuple(replace(p, dtype="float32") if p.dtype == "bfloat16" else p for p in MODEL)


CASES = {
    "dp2mp4_to_dp1mp2": Case(MODEL, dp_mp(2, 4, MODEL), dp_mp(1, 2, MODEL)),
    "dp4_to_full": Case(MODEL, dp_mp(4, 1, MODEL), None),
    "opt2_dp4mp2_to_dp2mp2": Case(MA, dp_mp(4, 2, MA, opt_shard=2), dp_mp(2, 2, MA, opt_shard=True)),
    "pp2_to_dp2mp2": Case(MA, pipeline(2, 2, 2, MA), dp_mp(2, 2, MA)),
    "distinct_extras_dp2mp2_to_dp1mp4": Case(MODEL, dp_mp(2, 2, MODEL), dp_mp(1, 4, MODEL), distinct_extras=True),
    "st_dp2mp2_to_dp1mp4": Case(M32, dp_mp(2, 2, M32), dp_mp(1, 4, M32)),
    "st_opt2_dp4mp2_to_dp2mp2": Case(_with_adam(M32), dp_mp(4, 2, _with_adam(M32), opt_shard=2),
                                     dp_mp(2, 2, _with_adam(M32), opt_shard=True)),
}
for _label, _case in CASES.items():
    object.__setattr__(_case, "label", "dedup_" + _label)
# Generated layouts: random cases with a sharded, replicated source that MindSpore transforms.
SEEDS = (0, 1, 2, 6, 7, 42, 43, 50)
ST = [n for n in CASES if n.startswith("st_")]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """name -> (case files, de-duplicated ckpt source, and for st_ cases: safetensors dedup source and
    MindSpore's outputs from the full safetensors source, by format)."""
    randoms = {f"random{s}": random_case(s) for s in SEEDS}
    every = {**CASES, **randoms}
    built = dict(zip(every, build_cases(list(every.values())), strict=True))
    out = {}
    for name, files in built.items():
        if files.error or files.case.src is None or files.case.src_stage is not None or files.case.fmt == "json":
            continue  # MindSpore's redundancy rule reads protobuf strategies only
        if any(lay.multi_axis for st in files.case.src.stages for _, lay in st):
            continue  # MindSpore's redundancy rule reads the first TensorMap message only
        kept = assignment(files)
        if not any(len(keep) < len(lo) for lo, keep in kept.values()):
            continue  # nothing replicated: de-duplication changes nothing
        extras = {p.name for p in files.case.params} - files.case.src.names()
        if not extras and not all(keep for _, keep in kept.values()):
            continue  # a rank would save an empty file (training always adds epoch/step numbers)
        root = tmp_path_factory.mktemp(name)
        entry = {"files": files, "ckpt": write_dedup(files, root / "dedup")}
        if name.startswith("st_"):
            st_full = root / "st_full"
            ms.ckpt_to_safetensors(str(files.src_dir), str(st_full))
            entry["safetensors"] = write_dedup(files, root / "st_dedup", fmt="safetensors")
            src, dst = _strategies(files)
            entry["expected_ckpt"] = root / "expected_ckpt"
            ms.transform_checkpoints(str(st_full), str(entry["expected_ckpt"]), "checkpoint_", src, dst,
                                     output_format="ckpt")
            entry["expected_safetensors"] = root / "expected_safetensors"
            ms.ckpt_to_safetensors(str(entry["expected_ckpt"]), str(entry["expected_safetensors"]))
        out[name] = entry
    return out


def _strategies(files):
    return (str(files.src_strategy) if files.src_strategy else None,
            str(files.dst_strategy) if files.dst_strategy else None)


def test_sources_are_deduplicated(cases):
    """The fixture must produce what the feature is about: replicas holding different subsets."""
    assert set(CASES) <= set(cases)
    assert sum(n.startswith("random") for n in cases) >= 2
    for name, entry in cases.items():
        held = {int(d.name[5:]): {r.name for r in read_checkpoint(next(d.glob("*.ckpt")))}
                for d in entry["ckpt"].iterdir()}
        assert len({frozenset(v) for v in held.values()}) > 1, name


@pytest.mark.parametrize("name", [*CASES, *(f"random{s}" for s in SEEDS)])
def test_dedup_ckpt_source_matches_full_transform(cases, tmp_path, name):
    if name not in cases:
        pytest.skip("the generated case has no replicated source parameter")
    files = cases[name]["files"]
    src, dst = _strategies(files)
    mpitrans.transform(str(cases[name]["ckpt"]), str(tmp_path / "out"), src, dst, write_manifest=False)
    assert_same_tree(files.expected_dir, tmp_path / "out")


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
@pytest.mark.parametrize("name", ST)
def test_dedup_safetensors_source_matches_full_transform(cases, tmp_path, name, fmt):
    entry = cases[name]
    src, dst = _strategies(entry["files"])
    mpitrans.transform(str(entry["safetensors"]), str(tmp_path / "out"), src, dst, write_manifest=False,
                       output_format=fmt)
    assert_same_tree(entry[f"expected_{fmt}"], tmp_path / "out")


def test_mindspore_drops_parameters_of_a_dedup_source(cases, tmp_path):
    """Why this matters: MindSpore's transform of the de-duplicated files silently loses parameters."""
    entry = cases["dp2mp4_to_dp1mp2"]
    src, dst = _strategies(entry["files"])
    ms.transform_checkpoints(str(entry["ckpt"]), str(tmp_path / "ms"), "checkpoint_", src, dst)
    theirs = {r.name for r in read_checkpoint(tmp_path / "ms" / "rank_0" / "checkpoint_0.ckpt")}
    full = {r.name for r in read_checkpoint(entry["files"].expected_dir / "rank_0" / "checkpoint_0.ckpt")}
    assert theirs < full


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2])
def test_dedup_under_mpirun(cases, tmp_path, nprocs):
    jobs, expected = [], {}
    for name, entry in cases.items():
        src, dst = _strategies(entry["files"])
        for fmt in ("ckpt", "safetensors") if name.startswith("st_") else ("ckpt",):
            label = f"{name}-{fmt}"
            jobs.append({"label": label, "src": str(entry[fmt]), "src_strategy": src, "dst": str(tmp_path / label),
                         "dst_strategy": dst, "max_buffer": 4 << 10})
            expected[label] = entry["expected_ckpt"] if fmt == "safetensors" else entry["files"].expected_dir
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    proc = mpirun_script(nprocs, [str(REPO / "tests" / "support" / "mpi_cases.py"), str(tmp_path / "jobs.json")],
                         timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for label, want in expected.items():
        (tmp_path / label / "mpitrans_manifest.json").unlink()
        assert_same_tree(want, tmp_path / label)


@pytest.mark.mpi
def test_dedup_without_shared_disk(cases, tmp_path):
    """Host A trained ranks 0-3 (and holds the strategies), host B ranks 4-7: what only B's replicas kept
    crosses to A over MPI, and each target lands on its writer's host."""
    import os

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mount namespaces need root and util-linux unshare")
    entry = cases["dp2mp4_to_dp1mp2"]
    files = entry["files"]
    for host, ranks in (("hostA", range(4)), ("hostB", range(4, 8))):
        for g in ranks:
            shutil.copytree(entry["ckpt"] / f"rank_{g}", tmp_path / host / "data" / "src" / f"rank_{g}")
    shutil.copy(files.src_strategy, tmp_path / "hostA" / "data" / "src_strategy.ckpt")
    shutil.copy(files.dst_strategy, tmp_path / "hostA" / "data" / "dst_strategy.ckpt")
    (tmp_path / "mnt").mkdir()
    mnt = tmp_path / "mnt" / "data"
    args = ["--src-checkpoint", str(mnt / "src"), "--src-strategy", str(mnt / "src_strategy.ckpt"),
            "--dst-checkpoint", str(mnt / "dst"), "--dst-strategy", str(mnt / "dst_strategy.ckpt"), "--quiet"]
    env = {"MPITRANS_TEST_MOUNT": str(tmp_path / "mnt"),
           "MPITRANS_TEST_HOSTS": ",".join(str(tmp_path / h) for h in ("hostA", "hostB"))}
    proc = mpirun(2, args, wrapper=["-x", "MPITRANS_TEST_MOUNT", "-x", "MPITRANS_TEST_HOSTS", str(HOST_WRAPPER)],
                  env=env)
    assert proc.returncode == 0, proc.stderr
    for target, host in ((0, "hostA"), (1, "hostB")):
        rel = Path(f"rank_{target}") / f"checkpoint_{target}.ckpt"
        assert (tmp_path / host / "data" / "dst" / rel).read_bytes() == (files.expected_dir / rel).read_bytes()


def _drop(src: Path, dest: Path, name: str, ranks) -> Path:
    """A copy of a ckpt source with `name` removed from the files of `ranks`."""
    shutil.copytree(src, dest)
    for g in ranks:
        path = next((dest / f"rank_{g}").glob("*.ckpt"))
        params = ms.load_checkpoint(str(path))
        path.unlink()
        ms.save_checkpoint(params, str(path), choice_func=lambda n: n != name)
    return dest


def test_truly_missing_parameter_is_one_clear_error(cases, tmp_path):
    entry = cases["dp2mp4_to_dp1mp2"]
    src, dst = _strategies(entry["files"])
    holders = [g for g, (_, keep) in assignment(entry["files"]).items() if "head.weight" in keep]
    nowhere = _drop(entry["ckpt"], tmp_path / "nowhere", "head.weight", holders)
    with pytest.raises(MpitransError) as err:
        mpitrans.transform(str(nowhere), str(tmp_path / "out1"), src, dst)
    assert "'head.weight'" in str(err.value) and "rank_0..rank_7" in str(err.value)
    assert not (tmp_path / "out1").exists() or not any((tmp_path / "out1").rglob("*.ckpt"))
    # One slice lost: the replica that kept it lost it, its twin never had it.
    one = _drop(entry["ckpt"], tmp_path / "one", "head.weight", holders[:1])
    with pytest.raises(MpitransError) as err:
        mpitrans.transform(str(one), str(tmp_path / "out2"), src, dst)
    twin = holders[0] % 4
    message = str(err.value)
    assert "'head.weight'" in message and f"rank_{twin}" in message and "searched" in message
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").rglob("*.ckpt"))


@pytest.mark.parametrize("api", ["transform", "transform_checkpoints"])
def test_missing_replica_directory_is_named(cases, tmp_path, api):
    """The replica that kept a slice is absent: the job names its rank_x (MindSpore's lenient API too)."""
    entry = cases["dp2mp4_to_dp1mp2"]
    src, dst = _strategies(entry["files"])
    holder = next(g for g, (_, keep) in sorted(assignment(entry["files"]).items()) if g >= 4 and keep)
    shutil.copytree(entry["ckpt"], tmp_path / "src")
    shutil.rmtree(tmp_path / "src" / f"rank_{holder}")
    with pytest.raises(MpitransError) as err:
        if api == "transform":
            mpitrans.transform(str(tmp_path / "src"), str(tmp_path / "out"), src, dst)
        else:
            mpitrans.transform_checkpoints(str(tmp_path / "src"), str(tmp_path / "out"), "checkpoint_", src, dst)
    assert f"rank_{holder}" in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.ckpt"))
