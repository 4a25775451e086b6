"""safetensors sources and targets against MindSpore, byte for byte.

Each case's `.ckpt` shards (built by `tests/support/oracle.py`) are converted with MindSpore's own
`ckpt_to_safetensors`; then mpitrans reshards them and its output trees must be identical files to
MindSpore's: `transform_checkpoints(..., output_format="ckpt")`, and for safetensors targets that output
converted by `ckpt_to_safetensors`. MindSpore's direct `output_format="safetensors"` is not the oracle:
it hands `save_file` non-contiguous numpy views (a target cut along a later axis), whose raw memory
`save_file` writes without looking at strides, so such tensors come out scrambled (see
`test_mindspore_direct_safetensors_output`). The results also load with
`mindspore.load_checkpoint(format="safetensors")` and the `safetensors` package, and bfloat16 stays
bit-exact.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import mpitrans
from tests.support.layouts import MODEL, Case, ParamSpec, _with_adam, dp_mp, pipeline
from tests.support.mpirun import REPO, mpirun_script
from tests.support.oracle import assert_same_tree, build_cases, read_checkpoint

ms = pytest.importorskip("mindspore")

# MindSpore's safetensors code goes through numpy, which cannot hold bfloat16 in this environment (its
# numpy is newer than the one MindSpore was built with), so MindSpore is the oracle on models without it;
# bfloat16 is checked against the `.ckpt` path (itself checked against MindSpore) below.
M = tuple(replace(p, dtype="float32") if p.dtype == "bfloat16" else p for p in MODEL)
MA = _with_adam(M)
DT = tuple(ParamSpec(f"p_{dt}", (8, 4), dt) for dt in
           ("float32", "float16", "int32", "int8", "int64", "float64", "bool", "uint8")) + (
    ParamSpec("learning_rate", (), "float32"), ParamSpec("global_step", (1,), "int32"))
CASES = {
    "dp2mp2_to_dp1mp4": Case(M, dp_mp(2, 2, M), dp_mp(1, 4, M)),
    "dtypes_dp2mp2_to_dp1mp4": Case(DT, dp_mp(2, 2, DT), dp_mp(1, 4, DT)),
    "full_to_dp2mp2": Case(M, None, dp_mp(2, 2, M)),
    "dp2mp2_to_full": Case(M, dp_mp(2, 2, M), None),
    "opt2_dp4mp2_to_opt_dp2mp2": Case(MA, dp_mp(4, 2, MA, opt_shard=2), dp_mp(2, 2, MA, opt_shard=True)),
    "pp2_to_dp2mp2": Case(MA, pipeline(2, 2, 2, MA), dp_mp(2, 2, MA)),
    "distinct_extras_dp2mp2_to_dp1mp2": Case(M, dp_mp(2, 2, M), dp_mp(1, 2, M), distinct_extras=True),
}
for _label, _case in CASES.items():
    object.__setattr__(_case, "label", "st_" + _label)
NAMES = list(CASES)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """name -> (case files, safetensors source dir, MindSpore's outputs by format)."""
    built = dict(zip(NAMES, build_cases(list(CASES.values())), strict=True))
    out = {}
    for name, files in built.items():
        root = tmp_path_factory.mktemp(name)
        st_src = root / "src"
        ms.ckpt_to_safetensors(str(files.src_dir), str(st_src))
        src = str(files.src_strategy) if files.src_strategy else None
        dst = str(files.dst_strategy) if files.dst_strategy else None
        expected = {"ckpt": root / "expected_ckpt", "safetensors": root / "expected_safetensors",
                    "direct": root / "direct_safetensors"}
        ms.transform_checkpoints(str(st_src), str(expected["ckpt"]), "checkpoint_", src, dst, output_format="ckpt")
        ms.ckpt_to_safetensors(str(expected["ckpt"]), str(expected["safetensors"]))
        ms.transform_checkpoints(str(st_src), str(expected["direct"]), "checkpoint_", src, dst,
                                 output_format="safetensors")
        out[name] = (files, st_src, expected)
    return out


def _strategies(files):
    return (str(files.src_strategy) if files.src_strategy else None,
            str(files.dst_strategy) if files.dst_strategy else None)


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
@pytest.mark.parametrize("name", NAMES)
def test_safetensors_sources_match_mindspore(cases, tmp_path, name, fmt):
    files, st_src, expected = cases[name]
    assert any(expected[fmt].rglob(f"*.{fmt}")), "MindSpore wrote nothing"
    mpitrans.transform_checkpoints(str(st_src), str(tmp_path / "out"), "checkpoint_", *_strategies(files),
                                   output_format=fmt)
    if name.startswith("pp") and fmt == "ckpt":
        # MindSpore's safetensors path converts each source stage in its own process and saves the
        # parameters in the order those processes finish (a race); ours keep the `.ckpt` path's order.
        _assert_same_records(expected[fmt], tmp_path / "out")
    else:
        assert_same_tree(expected[fmt], tmp_path / "out")


def _assert_same_records(expected, actual):
    files = sorted(p.relative_to(expected) for p in expected.rglob("*.ckpt"))
    assert files == sorted(p.relative_to(actual) for p in actual.rglob("*.ckpt"))
    for rel in files:
        want = {r.name: (r.dtype, r.dims, r.data) for r in read_checkpoint(expected / rel)}
        assert want == {r.name: (r.dtype, r.dims, r.data) for r in read_checkpoint(actual / rel)}, rel


def test_mindspore_direct_safetensors_output(cases, tmp_path):
    """Where MindSpore's direct safetensors output is right (no target cut along a later axis), it is
    ours byte for byte; where a column cut scrambles it, ours holds what its `.ckpt` output holds."""
    for name, same in (("dp2mp2_to_full", True), ("pp2_to_dp2mp2", True), ("dp2mp2_to_dp1mp4", False)):
        files, st_src, expected = cases[name]
        out = tmp_path / name
        mpitrans.transform_checkpoints(str(st_src), str(out), "checkpoint_", *_strategies(files),
                                       output_format="safetensors")
        if same:
            assert_same_tree(expected["direct"], out)
        else:
            with pytest.raises(AssertionError):
                assert_same_tree(expected["direct"], out)
            assert_same_tree(expected["safetensors"], out)


def test_targets_load_in_mindspore_and_safetensors(cases, tmp_path):
    from safetensors.numpy import load_file

    files, st_src, expected = cases["dtypes_dp2mp2_to_dp1mp4"]
    out = tmp_path / "out"
    mpitrans.transform_checkpoints(str(st_src), str(out), "checkpoint_", *_strategies(files),
                                   output_format="safetensors")
    for path in sorted(out.rglob("*.safetensors")):
        ours = ms.load_checkpoint(str(path), format="safetensors")
        theirs = ms.load_checkpoint(str(expected["safetensors"] / path.relative_to(out)), format="safetensors")
        assert list(ours) == list(theirs)
        plain = load_file(str(path))
        for k, v in theirs.items():
            assert ours[k].dtype == v.dtype and ours[k].shape == v.shape
            assert ours[k].asnumpy().tobytes() == v.asnumpy().tobytes() == plain[k].tobytes(), k


def test_ckpt_sources_to_safetensors_targets(cases, tmp_path):
    """MindSpore refuses .ckpt -> safetensors; ours equals its safetensors -> safetensors on the same data."""
    files, _, expected = cases["opt2_dp4mp2_to_opt_dp2mp2"]
    mpitrans.transform_checkpoints(str(files.src_dir), str(tmp_path / "out"), "checkpoint_", *_strategies(files),
                                   output_format="safetensors")
    assert_same_tree(expected["safetensors"], tmp_path / "out")


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2, 4])
def test_safetensors_under_mpirun(cases, tmp_path, nprocs):
    jobs = []
    for name in NAMES[:5]:
        files, st_src, _ = cases[name]
        src, dst = _strategies(files)
        jobs.append({"label": name, "src": str(st_src), "src_strategy": src, "dst": str(tmp_path / name),
                     "dst_strategy": dst, "max_buffer": 64 << 10, "output_format": "safetensors"})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    proc = mpirun_script(nprocs, [str(REPO / "tests" / "support" / "mpi_cases.py"), str(tmp_path / "jobs.json")],
                         timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in NAMES[:5]:
        (tmp_path / name / "mpitrans_manifest.json").unlink()
        assert_same_tree(cases[name][2]["safetensors"], tmp_path / name)
