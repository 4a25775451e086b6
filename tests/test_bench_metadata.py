"""The metadata-heavy benchmark's smoke run: a 4-layer Adam model, 32 -> 8 ranks, one repeat; mpitrans' output
must equal MindSpore's byte for byte and the report must carry the time split by phase."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mindspore")
pytestmark = [pytest.mark.mpi]

REPO = Path(__file__).resolve().parents[1]


def test_metadata_benchmark_quick(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.metadata", "--quick", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("metadata-*-quick.json")]
    (case,) = result["results"]
    assert case["identical"] is True and case["tensors"] == 118
    assert set(case["phases"]) >= {"strategies", "index", "plan", "exchange", "bytes"}
    assert case["median"]["mindspore"] > 0 and case["median"]["mpitrans"] > 0
