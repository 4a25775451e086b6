"""`--lora-merge` against MindFormers' `transform_ckpt_lora.py` formula evaluated with MindSpore, under
mpirun (1 and 2 processes) and through the Python API, on dp/mp and pipeline sources, full and
distributed targets (`tests/support/lora_oracle.py` builds the reference).

Tolerance: none against the formula evaluated with MindSpore ops summing the rank in mpitrans' fixed
order (k = 0, 1, ...): every byte equal, whatever the dtype (float32, float16, bfloat16) and however the
weight is cut. Against `ops.mm` (its own summation order): merged 16-bit weights within 1 ulp, float32
within 4 epsilons of the largest element. Parameter order is MindSpore's own reshard's order.
"""

from __future__ import annotations

import numpy as np
import pytest

import mpitrans
from mpitrans.job.lora import LoraMerger, from_float32, lora_delta, to_float32
from mpitrans.job.transport import LocalTransport
from mpitrans.plan.lora import ROLE_A, ROLE_B
from mpitrans.plan.planner import OutTensor
from tests.support.layouts import Case, LayoutSpec, dp_mp, pipeline, with_layout
from tests.support.lora_oracle import expected_merged, lora_model
from tests.support.mpirun import mpirun
from tests.support.oracle import build_cases, read_checkpoint

MODEL = lora_model()
MERGED = {"layers.0.wq.weight", "layers.0.wo.weight", "layers.1.w3.weight"}
# Megatron-style: wq split by rows (B by rows, A whole), wo by columns (A by columns, B whole).
MAPS = {"layers.0.wq.weight": (0, -1), "layers.0.wq.mindpet_delta_lora_b": (0, -1),
        "layers.0.wo.weight": (-1, 0), "layers.0.wo.lora_A.weight": (-1, 0), "layers.1.w3.weight": (0, -1)}

FACTORS_SPLIT = {"layers.0.wq.mindpet_delta_lora_b": (0, -1), "layers.0.wo.lora_A.weight": (-1, 0)}


def _no_lora(layout: LayoutSpec) -> LayoutSpec:
    """The destination strategy of the deployed (merged) model: it does not list the factors."""
    return LayoutSpec(tuple(tuple((n, lay) for n, lay in st if "lora_" not in n) for st in layout.stages))


CASES = {
    "dp2mp2_to_full": (Case(MODEL, with_layout(MODEL, (2, 2), MAPS), None), "16/8", 2.0),
    "pp2_to_dp1mp2": (Case(MODEL, pipeline(2, 1, 2, MODEL), _no_lora(dp_mp(1, 2, MODEL))), "0.5", 0.5),
    "dp1mp2_to_dp2mp2": (Case(MODEL, dp_mp(1, 2, MODEL), with_layout(MODEL, (2, 2), MAPS)), "3", 3.0),
    # Weights replicated in the source but factors split: a target needs factor shards of files its
    # weights alone would not need (MindSpore's rank list is [r]).
    "factors_split_to_dp2": (Case(MODEL, with_layout(MODEL, (1, 2), FACTORS_SPLIT),
                                  _no_lora(with_layout(MODEL, (2, 1), {}))), "1", 1.0),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("mindspore")
    cases = [c for c, _, _ in CASES.values()]
    for label, c in zip(CASES, cases, strict=True):
        object.__setattr__(c, "label", f"lora_{label}")
    files = dict(zip(CASES, build_cases(cases), strict=True))
    work = tmp_path_factory.mktemp("lora_oracle")
    jobs = [{"src_dir": str(f.src_dir), "src": str(f.src_strategy), "dst": str(f.dst_strategy) if f.dst_strategy
             else None, "scaling": CASES[k][2], "work": str(work / k)} for k, f in files.items()]
    expected_merged(jobs, work)
    return {k: (f, work / k / "expected") for k, f in files.items()}


def _ordered(raw: bytes, dtype: str) -> np.ndarray:
    """Bit patterns as integers ordered like the values, so adjacent floats differ by 1."""
    width = 16 if dtype in ("BFloat16", "Float16") else 32
    bits = np.frombuffer(raw, dtype=f"<u{width // 8}").astype(np.int64)
    sign = 1 << (width - 1)
    return np.where(bits & sign, -(bits & (sign - 1)), bits)


def _assert_near_mm(mm_dir, out_dir) -> None:
    """Against `ops.mm`'s own summation order: 16-bit weights within 1 ulp; float32 within 4 float32
    epsilons of the largest term (a sum of r products can cancel far below its terms' size)."""
    for path in mm_dir.rglob("*.ckpt"):
        got = {r.name: r for r in read_checkpoint(out_dir / path.relative_to(mm_dir))}
        for w in read_checkpoint(path):
            if w.name not in MERGED:
                continue
            r = got[w.name]
            if r.dtype == "Float32":
                x, y = np.frombuffer(r.data, "<f4"), np.frombuffer(w.data, "<f4")
                assert np.abs(x - y).max() <= 4 * np.finfo(np.float32).eps * max(np.abs(y).max(), 1.0), w.name
            else:
                assert np.abs(_ordered(r.data, r.dtype) - _ordered(w.data, w.dtype)).max() <= 1, w.name


def _assert_merged(expected_dir, out_dir, plain_order_dir) -> None:
    exp_files = sorted(p.relative_to(expected_dir) for p in expected_dir.rglob("*.ckpt"))
    got_files = sorted(p.relative_to(out_dir) for p in out_dir.rglob("*.ckpt"))
    assert got_files == exp_files
    for rel in exp_files:
        got = read_checkpoint(out_dir / rel)
        # Order as MindSpore's own reshard of these sources orders the kept names.
        plain = [r.name for r in read_checkpoint(plain_order_dir / rel) if "lora_" not in r.name]
        assert [r.name for r in got] == plain, rel
        want = {r.name: r for r in read_checkpoint(expected_dir / rel)}
        assert set(want) == {r.name for r in got}
        for r in got:
            w = want[r.name]
            assert (r.dtype, r.dims, r.data) == (w.dtype, w.dims, w.data), f"{rel} {r.name}"
    _assert_near_mm(expected_dir.parent / "expected_mm", out_dir)


def _args(files, out) -> list[str]:
    args = ["--src-checkpoint", str(files.src_dir), "--src-strategy", str(files.src_strategy),
            "--dst-checkpoint", str(out), "--quiet"]
    return args + (["--dst-strategy", str(files.dst_strategy)] if files.dst_strategy else [])


@pytest.mark.parametrize("nprocs", [1, 2])
@pytest.mark.parametrize("name", list(CASES))
def test_merge_matches_mindformers_formula_under_mpirun(built, tmp_path, name, nprocs):
    files, expected = built[name]
    out = tmp_path / "out"
    res = mpirun(nprocs, [*_args(files, out), "--lora-scaling", CASES[name][1], "--max-buffer", "1K"])
    assert res.returncode == 0, res.stderr
    (out / "mpitrans_manifest.json").unlink()
    _assert_merged(expected, out, files.expected_dir)


def test_yaml_config(built, tmp_path):
    files, expected = built["dp2mp2_to_full"]
    cfg, out = tmp_path / "mpitrans.yaml", tmp_path / "out"
    cfg.write_text("lora_merge: true\nlora_scaling: 16/8\n")
    res = mpirun(2, ["--config", str(cfg), *_args(files, out)])
    assert res.returncode == 0, res.stderr
    (out / "mpitrans_manifest.json").unlink()
    _assert_merged(expected, out, files.expected_dir)


def test_api_and_verify(built, tmp_path):
    files, expected = built["dp1mp2_to_dp2mp2"]
    out = tmp_path / "out"
    kw = {"lora_scaling": 3, "write_manifest": False, "comm": LocalTransport()}
    mpitrans.transform(str(files.src_dir), str(out), str(files.src_strategy), str(files.dst_strategy), **kw)
    _assert_merged(expected, out, files.expected_dir)
    from mpitrans.job.verify import verify

    results = verify(str(files.src_dir), str(out), str(files.src_strategy), str(files.dst_strategy),
                     comm=LocalTransport(), lora_scaling=3)
    assert results and all(r.ok for r in results), results


def test_bad_factor_shape_names_the_parameter_and_writes_nothing(tmp_path):
    pytest.importorskip("mindspore")
    bad = tuple(p if p.name != "layers.0.wo.lora_B.weight" else p.__class__(p.name, (8, 4), p.dtype) for p in MODEL)
    files = build_cases([Case(bad, dp_mp(1, 2, bad), None, label="lora_bad_shape")])[0]
    out = tmp_path / "out"
    res = mpirun(2, [*_args(files, out), "--lora-merge"])
    assert res.returncode != 0
    assert "'layers.0.wo.weight'" in res.stderr and "'layers.0.wo.lora_B.weight'" in res.stderr, res.stderr
    assert not list(out.rglob("*.ckpt")) and "Traceback" not in res.stderr


def _aux(name, role, arr, dtype="float32"):
    return OutTensor(name, dtype, arr.shape, (), role)


@pytest.mark.parametrize("tile", [1 << 18, 25, 4])  # whole segments, several rows, pieces of a row
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_tiles_give_the_same_bytes_as_one_pass(dtype, tile, monkeypatch):
    """Any cut of the weight's elements (chunk boundaries mid-row included, tiles of any size) merges to
    the same bytes."""
    monkeypatch.setattr("mpitrans.job.lora.TILE", tile)
    rng = np.random.default_rng(7)
    b, a = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal((3, 10)).astype(np.float32)
    w = from_float32(rng.standard_normal((6, 10)).astype(np.float32), dtype)
    weight = OutTensor("w", dtype, (6, 10), (), "", 0.75)
    whole = None
    for cuts in ([0, 60], [0, 7, 13, 33, 59, 60], [*range(0, 60, 4), 60]):
        m = LoraMerger()
        m.take(_aux("b", ROLE_B, b), 0, memoryview(b.tobytes()))
        m.take(_aux("a", ROLE_A, a), 0, memoryview(a.tobytes()))
        isz = len(w) // 60
        spans = zip(cuts, cuts[1:], strict=False)
        got = b"".join(m.merge(weight, s, e, memoryview(w)[s * isz:e * isz]) for s, e in spans)
        whole = whole or got
        assert got == whole
    ref = to_float32(w, dtype).reshape(6, 10) + lora_delta(b, a, 0.75)
    assert whole == from_float32(ref, dtype)


def test_bfloat16_rounding_matches_mindspore_cast():
    ms = pytest.importorskip("mindspore")
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(4000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 4000),
                        np.array([0.0, -0.0, np.inf, -np.inf, 1 + 2 ** -8, 1 + 3 * 2 ** -8], np.float32)])
    theirs = ms.Tensor(x).astype(ms.bfloat16).astype(ms.float32).asnumpy()
    assert from_float32(x, "bfloat16") == from_float32(theirs, "bfloat16")
    assert np.array_equal(to_float32(from_float32(x, "bfloat16"), "bfloat16"), theirs)
