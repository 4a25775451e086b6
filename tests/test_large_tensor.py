"""A tensor over MindSpore's 512 MiB record limit, both ways: a full file whose tensor is stored as two
records resharded to two ranks, and two shards merged back into a two-record full file, compared with
MindSpore byte for byte (and run under mpirun, so the bytes also cross processes)."""

from __future__ import annotations

import pytest

from mpitrans.fixtures.layouts import LayoutEntry
from tests.support.layouts import Case, LayoutSpec, ParamSpec
from tests.support.mpirun import mpirun
from tests.support.oracle import assert_same_tree, build_case

pytestmark = [pytest.mark.slow, pytest.mark.mpi]
pytest.importorskip("mindspore")

# float16 (MindSpore converts nothing), 16 x 17,301,504 elements = 528 MiB: just over one record.
BIG = ParamSpec("big.weight", (16, 17_301_504), "float16")
SMALL = ParamSpec("small.bias", (16,), "float32")
MP2 = LayoutSpec.single({"big.weight": LayoutEntry((2,), (0, -1)), "small.bias": LayoutEntry((2,), (0,))})


@pytest.mark.parametrize("direction", ["full_to_mp2", "mp2_to_full"])
def test_tensor_over_record_limit(tmp_path, direction):
    case = Case((BIG, SMALL), None, MP2) if direction == "full_to_mp2" else Case((BIG, SMALL), MP2, None)
    files = build_case(case)
    assert files.error is None, files.error
    args = ["--src-checkpoint", str(files.src_dir), "--dst-checkpoint", str(tmp_path / "out"), "--quiet",
            "--max-buffer", "96M"]
    if files.src_strategy:
        args += ["--src-strategy", str(files.src_strategy)]
    if files.dst_strategy:
        args += ["--dst-strategy", str(files.dst_strategy)]
    proc = mpirun(2, args, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "out" / "mpitrans_manifest.json").unlink()
    assert_same_tree(files.expected_dir, tmp_path / "out")
