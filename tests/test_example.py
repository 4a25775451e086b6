"""The quickstart example's check step: it must fail when it cannot check (quickstart.sh then fails too)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_check_fails_without_mindspore(tmp_path):
    blocker = tmp_path / "blocker" / "mindspore"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("mindspore is blocked for this test")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "blocker"), str(REPO)]))
    proc = subprocess.run([sys.executable, "-m", "mpitrans.example", "check", str(tmp_path / "work")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "mindspore is not installed" in proc.stderr and "nothing was checked" in proc.stderr


def test_quickstart_stops_at_a_failing_step():
    script = (REPO / "launch" / "quickstart.sh").read_text()
    assert "set -euo pipefail" in script
    assert script.rstrip().splitlines()[-1] == '"$PY" -m mpitrans.example check "$WORK"'
