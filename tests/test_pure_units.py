"""Unit tests of pure code do not import MindSpore: only the `*_oracle.py` modules (and the differential,
API and oracle-harness tests) compare with it, so the rest runs, and fails, on its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PURE_DIRS = ("plan", "storage", "strategy", "fixtures")


def pure_modules() -> list[str]:
    out = []
    for d in PURE_DIRS:
        for path in sorted((REPO / "tests" / d).glob("*.py")):
            if path.stem.endswith("_oracle") or path.stem in ("oracle", "__init__"):
                continue
            out.append(f"tests.{d}.{path.stem}")
    return out


def test_pure_unit_test_modules_do_not_import_mindspore():
    modules = pure_modules()
    assert "tests.plan.test_schedule" in modules and "tests.storage.test_ckpt" in modules
    code = (f"import importlib, sys\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
            f"    assert 'mindspore' not in sys.modules, m + ' imported mindspore'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
