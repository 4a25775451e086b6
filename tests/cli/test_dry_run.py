"""`--dry-run [--json]`: the plan a real run would follow, and nothing under the output directory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.mpirun import mpirun, python_m


def _args(example: Path, dst: Path, *extra: str) -> list[str]:
    return ["--src-checkpoint", str(example / "src"), "--src-strategy", str(example / "src_strategy.ckpt"),
            "--dst-checkpoint", str(dst), "--dst-strategy", str(example / "dst_strategy.ckpt"), *extra]


def _launch(launcher: str, args: list[str]) -> subprocess.CompletedProcess:
    proc = python_m(args, timeout=120) if launcher == "plain" else mpirun(2, args, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("launcher", ["plain", pytest.param("mpirun", marks=pytest.mark.mpi)])
def test_dry_run_reports_what_the_real_run_does(example, tmp_path, launcher):
    real = json.loads(_real_run(example, tmp_path, launcher).read_text())
    dry_dst = tmp_path / "dry"
    proc = _launch(launcher, _args(example, dry_dst, "--dry-run", "--json", "--json-summary",
                                   str(tmp_path / "dry.json")))
    assert not dry_dst.exists(), "a dry run must not create the output directory"
    plan = json.loads(proc.stdout)  # printed once, by rank 0 only, and nothing else on stdout
    assert plan == json.loads((tmp_path / "dry.json").read_text())
    assert sorted(plan["targets"]) == ["0", "1", "2", "3"]
    assert {int(t): x["writer"] for t, x in plan["targets"].items()} == {int(t): w for t, w in
                                                                          real["placement"].items()}
    assert [p["targets"] for p in plan["processes"]] == [r["targets"] for r in real["ranks"]]
    assert [p["bytes_written"] for p in plan["processes"]] == [r["bytes_written"] for r in real["ranks"]]
    assert sum(x["bytes"] for x in plan["targets"].values()) == real["bytes_written"]
    for t, x in plan["targets"].items():
        assert x["path"] == f"rank_{t}/checkpoint_{t}.ckpt"


def _real_run(example: Path, tmp_path: Path, launcher: str) -> Path:
    summary = tmp_path / "real.json"
    proc = _launch(launcher, _args(example, tmp_path / "real", "--quiet", "--json", "--json-summary", str(summary)))
    assert json.loads(proc.stdout) == json.loads(summary.read_text())  # --json: the summary on stdout too
    return summary


@pytest.mark.parametrize("launcher", ["plain", pytest.param("mpirun", marks=pytest.mark.mpi)])
def test_dry_run_from_a_configuration_file_prints_the_table(example, tmp_path, launcher):
    config = tmp_path / "t.yaml"
    config.write_text("dry_run: true\noverwrite: yes\n")
    dst = tmp_path / "deeper" / "dst"
    proc = _launch(launcher, _args(example, dst, "--config", str(config)))
    assert not (tmp_path / "deeper").exists()
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"mpitrans: dry run: 4 target rank(s), 7.5 MiB, under {dst} (nothing written)")
    assert len(lines) == 2 + (1 if launcher == "plain" else 2), proc.stdout  # one row per process, once
    # --no-dry-run on the command line wins over the file: the real run then writes the targets
    _launch(launcher, _args(example, dst, "--config", str(config), "--no-dry-run", "--quiet"))
    assert sorted(p.name for p in dst.iterdir()) == ["mpitrans_manifest.json", "rank_0", "rank_1", "rank_2",
                                                     "rank_3"]
