"""Full-model stores against MindSpore: unified safetensors (`--output-format unified-safetensors`) and
HDF5 (`--output-format hdf5`), written under mpirun with 1, 2 and 4 processes and read back as sources.

* dist -> unified store: every file identical to `mindspore.parallel.unified_safetensors` on the same
  shards (part files, `hyper_param.safetensors`, `param_name_map.json`), also with more part files than
  MindSpore's 3 GiB rule gives (MindSpore's count forced to the same number).
* unified store -> dist: identical to MindSpore's `transform_checkpoints` of the original shards, and
  tensor for tensor equal to `load_distributed_checkpoint(network=None, unified_safetensors_dir=...)`.
* dist -> HDF5 -> dist: identical to MindSpore's dist -> dist; plain `h5py` sees every full tensor,
  bfloat16 bit for bit.
* Bad input: a file the unified map names is missing; an `.h5` lacks a dataset or a part: one error,
  nothing written.

MindSpore's safetensors code cannot hold bfloat16 here (see test_safetensors_differential), so the
unified cases use float32 where the model has bfloat16; the HDF5 cases keep bfloat16 (`.ckpt` sources).
"""

from __future__ import annotations

import json
import math
import shutil
import types
from dataclasses import replace

import pytest

import mpitrans
from mpitrans.errors import MpitransError
from tests.support.layouts import MODEL, Case, ParamSpec, _with_adam, dp_mp, pipeline, random_case
from tests.support.mpirun import REPO, mpirun_script
from tests.support.oracle import assert_same_tree, build_cases, read_checkpoint

ms = pytest.importorskip("mindspore")
h5py = pytest.importorskip("h5py")


def _no_bf16(params):
    return tuple(replace(p, dtype="float32") if p.dtype == "bfloat16" else p for p in params)


def _random_unified_case() -> Case:
    """The first generated case with a single-stage distributed source and a distributed target."""
    for seed in range(1000):
        c = random_case(seed)
        if c.src is not None and c.dst is not None and c.src_stage is None and c.src.num_stages == 1:
            return Case(_no_bf16(c.params), c.src, c.dst, c.seed, None, c.distinct_extras, c.fmt)
    raise AssertionError("no suitable generated case")


M = _no_bf16(MODEL)
MA = _with_adam(M) + (ParamSpec("accu_grads.layer0.weight", (16, 24)),)  # MindSpore leaves it to hyper_param
UNIFIED = {
    "dp2mp2_to_dp1mp4": Case(MA, dp_mp(2, 2, MA), dp_mp(1, 4, MA)),
    "opt2_dp4mp2_to_opt_dp2mp2": Case(MA[:-1], dp_mp(4, 2, MA[:-1], opt_shard=2),
                                      dp_mp(2, 2, MA[:-1], opt_shard=True)),
    "pp2_to_dp2mp2": Case(_with_adam(M), pipeline(2, 2, 2, _with_adam(M)), dp_mp(2, 2, _with_adam(M))),
    "generated": _random_unified_case(),
}
MB = _with_adam(MODEL)
HDF5 = {
    "bf16_dp2mp2_to_dp1mp4": Case(MB, dp_mp(2, 2, MB), dp_mp(1, 4, MB)),
    "bf16_opt2_dp4mp2_to_dp2mp2": Case(MODEL, dp_mp(4, 2, MODEL, opt_shard=2), dp_mp(2, 2, MODEL)),
    "pp2_to_dp2mp2": UNIFIED["pp2_to_dp2mp2"],
}
for _label, _case in {**UNIFIED, **{"h5_" + k: v for k, v in HDF5.items()}}.items():
    object.__setattr__(_case, "label", "store_" + _label)
FORCED = 3  # part files asked of both tools in the many-files comparison


def _unified_by_mindspore(src: str, strategy: str, out: str, files: int | None = None) -> None:
    """MindSpore's unified_safetensors; with `files`, its 3 GiB rule forced to that many part files."""
    from mindspore.parallel import transform_safetensors as ts

    saved = ts.math
    if files:
        ts.math = types.SimpleNamespace(ceil=lambda _x: files, prod=math.prod)
    try:
        ts.unified_safetensors(src, strategy, out, max_process_num=1)
    finally:
        ts.math = saved


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """label -> (case files, safetensors shards or None, MindSpore's outputs)."""
    cases = {**{("u", k): v for k, v in UNIFIED.items()}, **{("h", k): v for k, v in HDF5.items()}}
    files = dict(zip(cases, build_cases(list(cases.values())), strict=True))
    out = {}
    for key, f in files.items():
        assert f.error is None, f.error
        if key[0] == "h":
            out[key] = (f, None, {})
            continue
        root = tmp_path_factory.mktemp(key[1])
        st = root / "src"
        ms.ckpt_to_safetensors(str(f.src_dir), str(st))
        expected = {"unified": root / "unified", "unified_many": root / "unified_many", "dist": root / "dist"}
        _unified_by_mindspore(str(st), str(f.src_strategy), str(expected["unified"]))
        _unified_by_mindspore(str(st), str(f.src_strategy), str(expected["unified_many"]), FORCED)
        ms.transform_checkpoints(str(st), str(expected["dist"]), "checkpoint_", str(f.src_strategy),
                                 str(f.dst_strategy), output_format="ckpt")
        out[key] = (f, st, expected)
    return out


def _jobs(built, tmp_path) -> list[dict]:
    jobs = []
    for (kind, name), (f, st, expected) in built.items():
        base = {"label": name, "max_buffer": 4 << 10}
        if kind == "u":
            src = {"src": str(st), "src_strategy": str(f.src_strategy)}
            jobs.append({**base, **src, "dst": str(tmp_path / name / "unified"),
                         "output_format": "unified-safetensors"})
            jobs.append({**base, **src, "dst": str(tmp_path / name / "unified_many"), "store_files": FORCED,
                         "output_format": "unified-safetensors"})
            jobs.append({**base, "src": str(expected["unified"]), "dst": str(tmp_path / name / "dist"),
                         "dst_strategy": str(f.dst_strategy)})
        else:
            jobs.append({**base, "src": str(f.src_dir), "src_strategy": str(f.src_strategy),
                         "dst": str(tmp_path / name / "h5"), "output_format": "hdf5"})
            jobs.append({**base, "src": str(tmp_path / name / "h5" / "model.h5"),
                         "dst": str(tmp_path / name / "h5_dist"), "dst_strategy": str(f.dst_strategy)})
    return jobs


def _records(path):
    return {r.name: (r.dtype, r.dims, r.data) for r in read_checkpoint(path)}


def _same_records(expected, actual, skip: str = "\0"):
    """Same files holding the same tensors (MindSpore's pipeline safetensors path orders them by a race),
    names starting with `skip` aside."""
    files = sorted(p.relative_to(expected) for p in expected.rglob("*.ckpt"))
    assert files == sorted(p.relative_to(actual) for p in actual.rglob("*.ckpt"))
    for rel in files:
        want, got = _records(expected / rel), _records(actual / rel)
        assert set(want) == set(got), rel
        assert {k: v for k, v in want.items() if not k.startswith(skip)} == \
            {k: v for k, v in got.items() if not k.startswith(skip)}, rel


def _check_unified_to_dist(case: Case, expected, actual) -> None:
    """A unified store keeps only rank 0's shard of `accu_grads.*` (MindSpore's rule): those cannot come
    back; everything else is MindSpore's dist -> dist, byte for byte where MindSpore's order is stable."""
    if any(p.name.startswith("accu_grads.") for p in case.params):
        _same_records(expected, actual, "accu_grads.")
    elif case.src.num_stages > 1:
        _same_records(expected, actual)
    else:
        assert_same_tree(expected, actual)


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2, 4])
def test_stores_under_mpirun(built, tmp_path, nprocs):
    (tmp_path / "jobs.json").write_text(json.dumps(_jobs(built, tmp_path)))
    proc = mpirun_script(nprocs, [str(REPO / "tests" / "support" / "mpi_cases.py"), str(tmp_path / "jobs.json")],
                         timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for p in tmp_path.rglob("mpitrans_manifest.json"):
        p.unlink()
    for (kind, name), (f, _, expected) in built.items():
        out = tmp_path / name
        if kind == "u":
            assert_same_tree(expected["unified"], out / "unified")
            assert_same_tree(expected["unified_many"], out / "unified_many")
            assert len(list((out / "unified_many").glob("part*.safetensors"))) == FORCED
            _check_unified_to_dist(f.case, expected["dist"], out / "dist")
        else:
            assert len(list((out / "h5").glob("part-*.h5"))) == min(nprocs, len(f.case.params))
            assert_same_tree(f.expected_dir, out / "h5_dist")


def test_unified_store_matches_load_distributed_checkpoint(built, tmp_path):
    """Our unified store -> dist equals, tensor for tensor, MindSpore's own reader of the same store
    (`accu_grads.*` aside: the store holds only rank 0's shard of it, see below)."""
    for name in ("dp2mp2_to_dp1mp4", "opt2_dp4mp2_to_opt_dp2mp2"):
        f, st, _ = built[("u", name)]
        ours = tmp_path / name / "unified"
        mpitrans.transform(str(st), str(ours), str(f.src_strategy), output_format="unified-safetensors")
        dist = tmp_path / name / "dist"
        mpitrans.transform(str(ours), str(dist), None, str(f.dst_strategy))
        theirs = tmp_path / name / "ms"
        for r in range(f.case.dst.device_num):
            ms.load_distributed_checkpoint(None, predict_strategy=str(f.dst_strategy), format="safetensors",
                                           unified_safetensors_dir=str(ours), dst_safetensors_dir=str(theirs),
                                           rank_id=r, output_format="ckpt")
            want = _records(theirs / f"rank_{r}" / "net.ckpt")
            got = _records(dist / f"rank_{r}" / f"checkpoint_{r}.ckpt")
            # Both stores hold only rank 0's shard of accu_grads.* (hyper_param.safetensors): MindSpore's
            # reader hands that shard over as it is, a transform cuts it by the target layout.
            assert {k: v for k, v in want.items() if not k.startswith("accu_grads.")} == \
                {k: v for k, v in got.items() if not k.startswith("accu_grads.")}
            assert set(want) == set(got)


def test_hdf5_store_opens_in_h5py(built, tmp_path):
    """Every dataset of model.h5 is the full tensor, bfloat16 as its bit pattern with its dtype named."""
    f, _, _ = built[("h", "bf16_dp2mp2_to_dp1mp4")]
    mpitrans.transform(str(f.src_dir), str(tmp_path / "h5"), str(f.src_strategy), output_format="hdf5",
                       store_files=2)
    full = _records(next(f.full_dir.rglob("*.ckpt")))
    dtypes = {p.name: p.dtype for p in f.case.params}
    with h5py.File(tmp_path / "h5" / "model.h5", "r") as h:
        assert sorted(h) == sorted(full)
        assert h.attrs["mpitrans_src_strategy_sha256"] and h.attrs["mpitrans_sources_sha256"]
        for name, (_, dims, data) in full.items():
            d = h[name]
            assert d.is_virtual and d.attrs["mpitrans_dtype"] == dtypes[name]
            assert tuple(d.shape) == tuple(dims) and d[()].tobytes() == data, name
            if dtypes[name] == "bfloat16":
                assert d.dtype.str == "<u2"
        assert any(dtypes[n] == "bfloat16" for n in full)
    with h5py.File(tmp_path / "h5" / "part-0.h5", "r") as h:
        assert any(h[n].chunks for n in h)


def _nothing_written(path):
    return not path.exists() or not any(p.is_file() for p in path.rglob("*"))


def test_unified_store_missing_file(built, tmp_path):
    f, _, expected = built[("u", "dp2mp2_to_dp1mp4")]
    store = tmp_path / "store"
    shutil.copytree(expected["unified_many"], store)
    (store / "part1.safetensors").unlink()
    with pytest.raises(MpitransError, match=r"param_name_map\.json.*part1\.safetensors.*missing"):
        mpitrans.transform(str(store), str(tmp_path / "out"), None, str(f.dst_strategy))
    assert _nothing_written(tmp_path / "out")


def test_hdf5_store_missing_dataset_or_part(built, tmp_path):
    f, _, _ = built[("h", "bf16_dp2mp2_to_dp1mp4")]
    h5 = tmp_path / "h5"
    mpitrans.transform(str(f.src_dir), str(h5), str(f.src_strategy), output_format="hdf5", store_files=2)
    with h5py.File(h5 / "model.h5", "a") as h:
        del h["layer0.weight"]
        order = json.loads(h.attrs["mpitrans_order"])
        h.attrs["mpitrans_order"] = json.dumps([n for n in order if n != "layer0.weight"])
    with pytest.raises(MpitransError, match="layer0.weight"):
        mpitrans.transform(str(h5 / "model.h5"), str(tmp_path / "out"), None, str(f.dst_strategy))
    assert _nothing_written(tmp_path / "out")
    (h5 / "part-1.h5").unlink()
    with pytest.raises(MpitransError, match=r"model\.h5.*part-1\.h5.*missing"):
        mpitrans.transform(str(h5 / "model.h5"), str(tmp_path / "out2"), None, str(f.dst_strategy))
    assert _nothing_written(tmp_path / "out2")


def test_store_refuses_a_destination_strategy(built, tmp_path):
    f, _, _ = built[("h", "bf16_dp2mp2_to_dp1mp4")]
    with pytest.raises(MpitransError, match="omit --dst-strategy"):
        mpitrans.transform(str(f.src_dir), str(tmp_path / "out"), str(f.src_strategy), str(f.dst_strategy),
                           output_format="hdf5")
    assert _nothing_written(tmp_path / "out")


def test_unified_safetensors_drop_in_with_choice_func(built, tmp_path):
    """`mpitrans.unified_safetensors` with a filtering choice_func writes MindSpore's files (the left-out
    parameters' rank-0 shards land in hyper_param.safetensors, as MindSpore puts them)."""
    from mindspore.parallel import unified_safetensors

    f, st, _ = built[("u", "dp2mp2_to_dp1mp4")]

    def choice(name: str) -> bool:
        return not name.startswith("adam_v.")

    unified_safetensors(str(st), str(f.src_strategy), str(tmp_path / "ms"), choice_func=choice, max_process_num=1)
    mpitrans.unified_safetensors(str(st), str(f.src_strategy), str(tmp_path / "ours"), choice_func=choice)
    assert_same_tree(tmp_path / "ms", tmp_path / "ours")
    with pytest.raises(MpitransError, match="renaming"):
        mpitrans.unified_safetensors(str(st), str(f.src_strategy), str(tmp_path / "bad"), choice_func=lambda n: n)


def test_command_line(built, tmp_path):
    """The flags as a user types them; refusals are one line, exit status 2 for a bad flag, 1 otherwise."""
    from tests.support.mpirun import python_m

    f, _, _ = built[("h", "bf16_dp2mp2_to_dp1mp4")]
    src = ["--src-checkpoint", str(f.src_dir), "--src-strategy", str(f.src_strategy)]
    ok = python_m([*src, "--dst-checkpoint", str(tmp_path / "h5"), "--output-format", "hdf5", "--store-files", "3",
                   "--quiet"])
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (tmp_path / "h5").glob("*.h5")) == ["model.h5", "part-0.h5", "part-1.h5", "part-2.h5"]
    again = python_m([*src, "--dst-checkpoint", str(tmp_path / "h5"), "--output-format", "hdf5", "--quiet"])
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = python_m([*src, "--dst-checkpoint", str(tmp_path / "x"), "--output-format", "hdf5", "--store-files", "0"])
    assert bad.returncode == 2 and "--store-files: '0' is not a positive number of files" in bad.stderr
    for extra, why in ((["--dry-run"], "--dry-run does not plan"), (["--dst-strategy", str(f.dst_strategy)],
                                                                     "omit --dst-strategy")):
        refused = python_m([*src, "--dst-checkpoint", str(tmp_path / "y"), "--output-format", "hdf5", *extra])
        assert refused.returncode == 1 and why in refused.stderr and "Traceback" not in refused.stderr
        assert _nothing_written(tmp_path / "y")
    checked = python_m(["verify", *src, "--dst-checkpoint", str(tmp_path / "h5"), "--output-format", "hdf5"])
    assert checked.returncode == 1 and "verify does not check" in checked.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("fmt", ["hdf5", "unified-safetensors"])
def test_stores_without_a_shared_disk(example, tmp_path, fmt):
    """Two simulated hosts, each holding half of every replica's shards (so bytes must cross): each host
    gets the parts its processes wrote and the index; gathered in one folder, the store reads back as
    MindSpore's dist -> dist output."""
    import os

    from tests.job.test_multihost import _hosts
    from tests.support.mpirun import HOST_WRAPPER, mpirun

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mount namespaces need root and util-linux unshare")
    _hosts(example, tmp_path, {"hostA": [0, 1, 4, 5], "hostB": [2, 3, 6, 7]})
    mnt = tmp_path / "mnt" / "data"
    args = ["--src-checkpoint", str(mnt / "src"), "--src-strategy", str(mnt / "src_strategy.ckpt"),
            "--dst-checkpoint", str(mnt / "dst"), "--json-summary", str(tmp_path / "summary.json"),
            "--output-format", fmt, "--store-files", "4", "--max-buffer", "64K"]
    env = {"MPITRANS_TEST_MOUNT": str(tmp_path / "mnt"),
           "MPITRANS_TEST_HOSTS": ",".join(str(tmp_path / h) for h in ("hostA", "hostB"))}
    proc = mpirun(2, args, wrapper=["-x", "MPITRANS_TEST_MOUNT", "-x", "MPITRANS_TEST_HOSTS", str(HOST_WRAPPER)],
                  env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sum(r["bytes_received"] for r in summary["ranks"]) > 0
    index = "model.h5" if fmt == "hdf5" else "param_name_map.json"
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    for i, host in enumerate(("hostA", "hostB")):
        dst = tmp_path / host / "data" / "dst"
        assert (dst / index).is_file()
        for part in dst.iterdir():
            if part.name not in (index, "mpitrans_manifest.json", ".mpitrans.lock"):
                assert not (gathered / part.name).exists()
                shutil.copy(part, gathered / part.name)
        written = {p.name for p in dst.iterdir()} - {index, "mpitrans_manifest.json", ".mpitrans.lock"}
        parts = {("part-{}.h5" if fmt == "hdf5" else "part{}.safetensors").format(j) for j in (i, i + 2)}
        hyper = {"hyper_param.safetensors"} if fmt != "hdf5" and host == "hostA" else set()  # part 4: process 0
        assert written == parts | hyper
    shutil.copy(tmp_path / "hostA" / "data" / "dst" / index, gathered / index)
    mpitrans.transform(str(gathered / index), str(tmp_path / "back"), None, str(example / "dst_strategy.ckpt"))
    (tmp_path / "back" / "mpitrans_manifest.json").unlink()
    if fmt == "hdf5":
        assert_same_tree(example / "expected", tmp_path / "back")
    else:  # a unified store lists tensors in safetensors order: the same tensors, in that order
        _same_records(example / "expected", tmp_path / "back")


def test_resume_keeps_a_part_only_for_the_same_layout(built, tmp_path, caplog):
    f, _, _ = built[("h", "bf16_dp2mp2_to_dp1mp4")]
    h5 = tmp_path / "h5"
    for files in (2, 2, 3):
        caplog.clear()
        mpitrans.transform(str(f.src_dir), str(h5), str(f.src_strategy), output_format="hdf5", store_files=files,
                           resume=True)
        redone = [r for r in caplog.records if "redoing" in r.getMessage()]
        assert len(redone) == (2 if files == 3 else 0)
    mpitrans.transform(str(h5 / "model.h5"), str(tmp_path / "back"), None, str(f.dst_strategy))
    (tmp_path / "back" / "mpitrans_manifest.json").unlink()
    assert_same_tree(f.expected_dir, tmp_path / "back")
