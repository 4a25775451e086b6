"""The planning-scale benchmark's CI smoke run: `python -m bench.planning --quick` (no MindSpore, seconds).

Times are not asserted (CI machines vary); the run must finish, plan every case and write its table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_planning_benchmark_quick(tmp_path):
    out = tmp_path / "planning.md"
    proc = subprocess.run([sys.executable, "-m", "bench.planning", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = out.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| dp")]
    assert len(rows) == 4, text
    assert "error" not in text
    assert all("| 2171 |" in row for row in rows)  # the 70B shape: 2,169 parameters and two scalars
