"""The benchmark's safetensors row on a ~2 MB model: mpitrans from safetensors sources into safetensors
targets, checked byte for byte against MindSpore's output converted; MindSpore's own safetensors transform
either timed or its failure recorded, never a failed case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mindspore")

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.mpi]


def test_bench_safetensors_row(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--plan", "a=0.0035", "--out", str(out), "--name", "st",
         "--contenders", "mindspore,mpitrans,mpitrans_st,mindspore_st", "--cache", str(tmp_path / "cache"),
         "--no-plot"],
        cwd=REPO, env=dict(os.environ, GLOG_v="3"), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (case,) = json.loads((out / "st.json").read_text())["cases"]
    assert "error" not in case, case.get("error")
    assert case["checks"]["mpitrans_st"]["identical"] is True
    assert case["checks"]["mpitrans_st"]["files"] == case["targets"]
    st = case["contenders"]["mpitrans_st"]
    assert st["wall_median"] > 0 and st["bytes_written"] > 0
    assert {"mpitrans_st/mpitrans", "mpitrans_st/mindspore"} <= set(case["ratios"])
    ms_st = case["contenders"]["mindspore_st"]
    assert ("wall_median" in ms_st) != ("error" in ms_st)  # timed, or its failure recorded
    table = (out / "st.md").read_text()
    assert "| mpitrans_st |" in table and "Safetensors row" in table
    assert any((tmp_path / "cache").glob("ms*/*/st_src/rank_*/*.safetensors"))  # converted once, cached
