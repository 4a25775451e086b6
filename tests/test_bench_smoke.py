"""The benchmark's CI smoke run: `python -m bench --smoke` on a ~2 MB model, scenarios (a) and (c).

It builds genuine sources with MindSpore, runs every contender once (MindSpore's one-process transform, its
by-rank recipe under mpirun, mpitrans under mpirun, the I/O floor) and checks mpitrans' output against
MindSpore's byte for byte. The plot is skipped when matplotlib is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mindspore")

REPO = Path(__file__).resolve().parents[1]
CONTENDERS = {"mindspore", "by_rank", "mpitrans", "floor"}

pytestmark = [pytest.mark.mpi]


def test_bench_smoke(tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, GLOG_v="3")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out), "--name", "smoke",
         "--cache", str(tmp_path / "cache")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = json.loads((out / "smoke.json").read_text())
    assert {c["scenario"] for c in doc["cases"]} == {"a", "c"}
    for case in doc["cases"]:
        assert "error" not in case, case.get("error")
        assert set(case["contenders"]) == CONTENDERS
        for name, entry in case["contenders"].items():
            assert len(entry["wall_s"]) == 1 and entry["wall_median"] > 0, name
            if name != "floor":
                assert entry["peak_rss_mib"] > 0, name
        assert case["checks"]["mpitrans"]["identical"] is True
        assert case["checks"]["mpitrans"]["files"] == case["targets"]
        mt = case["contenders"]["mpitrans"]
        assert mt["bytes_written"] > 0 and len(mt["summary"]["ranks"]) == case["procs"]
        assert set(case["ratios"]) >= {"mpitrans/mindspore", "mpitrans/by_rank", "mpitrans/floor"}
    assert (out / "smoke.md").read_text().count("| mpitrans |") == 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "smoke.png").stat().st_size > 0
