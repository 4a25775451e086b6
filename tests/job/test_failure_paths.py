"""Failure paths of whole jobs, with and without mpirun: interrupts at random points, a second job on the
same output, outputs that would overwrite sources, sources changed between a run and its resume,
unwritable target paths and full disks. Each must end the job within seconds with one clear message,
leave no incomplete file under a final name, and let `--resume` finish byte-identical to MindSpore."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.mpirun import MPIRUN, REPO, mpi_env
from tests.support.procs import command_lines

pytestmark = [pytest.mark.mpi]

MODES = ["local", "mpirun"]


def _args(example: Path, dst: Path, *extra: str, src: Path | None = None) -> list[str]:
    return ["--src-checkpoint", str(src or example / "src"), "--src-strategy", str(example / "src_strategy.ckpt"),
            "--dst-checkpoint", str(dst), "--dst-strategy", str(example / "dst_strategy.ckpt"), "--quiet", *extra]


def _cmd(mode: str, args: list[str], n: int = 2) -> list[str]:
    base = [sys.executable, "-m", "mpitrans", *args]
    return base if mode == "local" else [str(MPIRUN), "-n", str(n), "--oversubscribe", *base]


def _start(mode: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(_cmd(mode, args), env=mpi_env(env), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _run(mode: str, args: list[str], env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(mode, args), env=mpi_env(env), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _job_pids(dst: Path) -> list[int]:
    """Processes of a job writing `dst` (ranks and launcher)."""
    return [pid for pid, cmd in command_lines() if str(dst).encode() in cmd and b"mpitrans" in cmd]


def _rank_pids(dst: Path) -> list[int]:
    return [p for p in _job_pids(dst) if not Path(f"/proc/{p}/exe").resolve().name.startswith(("prte", "mpirun"))]


def _finals(dst: Path) -> list[Path]:
    return [p for p in dst.rglob("*.ckpt") if p.is_file() and not p.name.startswith(".")] if dst.exists() else []


def _assert_nothing_incomplete(example: Path, dst: Path) -> None:
    """Whatever carries a final name, or a completion record, is complete and correct."""
    for f in _finals(dst):
        assert f.read_bytes() == (example / "expected" / f.relative_to(dst)).read_bytes(), f"incomplete {f}"
    for rec in (dst / ".mpitrans_progress").glob("*.json") if (dst / ".mpitrans_progress").exists() else []:
        for entry in json.loads(rec.read_text())["files"].values():
            assert (dst / entry["path"]).stat().st_size == entry["size"]


def _assert_matches_mindspore(example: Path, dst: Path) -> None:
    for r in range(4):
        rel = Path(f"rank_{r}") / f"checkpoint_{r}.ckpt"
        assert (dst / rel).read_bytes() == (example / "expected" / rel).read_bytes(), rel
    manifest = json.loads((dst / "mpitrans_manifest.json").read_text())
    assert sorted(manifest["files"]) == ["0", "1", "2", "3"]
    assert not list(dst.rglob(".*.tmp-*")) and not (dst / ".mpitrans.lock").exists()


def _wait_gone(dst: Path, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while _job_pids(dst) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _job_pids(dst), "processes of an ended job are still running"


SLOW = {"MPITRANS_TEST_ROUND_DELAY": "0.4"}
LOCAL_HITS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL] * 2
MPI_HITS = [("rank", signal.SIGINT), ("rank", signal.SIGTERM), ("rank", signal.SIGKILL),
            ("launcher", signal.SIGINT), ("launcher", signal.SIGTERM), ("rank", signal.SIGINT),
            ("rank", signal.SIGKILL), ("launcher", signal.SIGTERM)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_interrupts_at_random_points_then_resume_is_identical(example, tmp_path, mode):
    rng = random.Random(f"interrupts-{mode}")
    hits = [("process", s) for s in LOCAL_HITS] if mode == "local" else MPI_HITS
    interrupted = 0
    for i, (who, sig) in enumerate(hits):
        dst = tmp_path / f"dst{i}"
        proc = _start(mode, _args(example, dst, "--max-buffer", "64K"), env=SLOW)
        time.sleep(rng.uniform(0.3, 2.5))
        if who == "rank":
            ranks = _rank_pids(dst)
            victim = rng.choice(ranks) if ranks else proc.pid
        else:
            victim = proc.pid
        try:
            os.kill(victim, sig)
        except ProcessLookupError:
            pass  # the job had finished already
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"hit {i} ({who}, {sig.name}): the job did not end within 20 s")
        _wait_gone(dst)
        _assert_nothing_incomplete(example, dst)
        if proc.returncode == 0:  # finished before the signal landed
            _assert_matches_mindspore(example, dst)
        else:
            interrupted += 1
        resumed = _run(mode, _args(example, dst, "--resume"))
        assert resumed.returncode == 0, resumed.stderr
        _assert_matches_mindspore(example, dst)
    assert interrupted >= len(hits) // 2, "most signals must land while the job runs"


@pytest.mark.parametrize("mode", MODES)
def test_sigint_ends_the_job_with_one_line_and_publishes_nothing_incomplete(example, tmp_path, mode):
    dst = tmp_path / "dst"
    proc = _start(mode, _args(example, dst, "--max-buffer", "64K"), env={"MPITRANS_TEST_ROUND_DELAY": "1"})
    deadline = time.monotonic() + 30
    while not list(dst.rglob(".*.tmp-*")) and time.monotonic() < deadline:  # mid-target
        time.sleep(0.05)
    ranks = _rank_pids(dst) if mode == "mpirun" else [proc.pid]
    os.kill(ranks[-1], signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode != 0
    assert "interrupted by SIGINT" in err and "Traceback" not in err
    _wait_gone(dst)
    _assert_nothing_incomplete(example, dst)
    assert not list(dst.rglob(".*.tmp-*")) or mode == "mpirun"  # a killed peer's temp file is cleaned on resume


@pytest.mark.parametrize("mode", MODES)
def test_a_second_job_on_the_same_output_is_refused(example, tmp_path, mode):
    dst = tmp_path / "dst"
    first = _start(mode, _args(example, dst, "--max-buffer", "64K"), env={"MPITRANS_TEST_ROUND_DELAY": "2"})
    deadline = time.monotonic() + 30
    while not (dst / ".mpitrans.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = _run(mode, _args(example, dst, "--overwrite"))
    assert second.returncode != 0
    assert "in use by another mpitrans job" in second.stderr and "pid" in second.stderr, second.stderr
    assert second.stderr.count("mpitrans: error") == 1
    first.communicate(timeout=90)
    assert first.returncode == 0
    _assert_matches_mindspore(example, dst)


@pytest.mark.parametrize("mode", MODES)
def test_a_stale_lock_of_a_dead_job_is_reported_and_taken_over(example, tmp_path, mode):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / ".mpitrans.lock").write_text(json.dumps({"job": "x", "host": "old-host", "pid": 4242, "started": 0}))
    proc = _run(mode, [a for a in _args(example, dst) if a != "--quiet"])
    assert proc.returncode == 0, proc.stderr
    assert "no longer running" in proc.stderr and "old-host" in proc.stderr
    _assert_matches_mindspore(example, dst)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("where", ["source-dir", "inside-rank-dir"])
def test_destination_that_would_overwrite_the_sources_is_refused(example, tmp_path, mode, where):
    src = tmp_path / "src"
    shutil.copytree(example / "src", src)
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    dst = src if where == "source-dir" else src / "rank_0" / "out"
    proc = _run(mode, _args(example, dst, "--overwrite", src=src))
    assert proc.returncode != 0
    assert "--dst-checkpoint" in proc.stderr and "another directory" in proc.stderr, proc.stderr
    assert proc.stderr.count("mpitrans: error") == 1
    after = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    assert after == before


def _rewrite_in_place(path: Path) -> None:
    """New tensor values, same names, shapes, dtypes and file size (as retraining in place would)."""
    from mpitrans.storage.ckpt import CheckpointWriter, index_checkpoint, read_box

    idx = index_checkpoint(str(path))
    tensors = [(e, bytes(b ^ 0x5A for b in read_box(str(path), e, [(0, d) for d in e.shape]))) for e in idx.entries]
    size = path.stat().st_size
    tmp = path.with_name("rewritten.tmp")
    with CheckpointWriter(str(tmp)) as w:
        for e, data in tensors:
            w.write_tensor(e.name, e.dtype, e.shape, data)
    assert tmp.stat().st_size == size
    path.write_bytes(tmp.read_bytes())  # in place: same inode, same size
    tmp.unlink()


@pytest.mark.parametrize("mode", MODES)
def test_resume_redoes_targets_whose_sources_changed_and_says_why(example, tmp_path, mode):
    src = tmp_path / "src"
    shutil.copytree(example / "src", src)
    dst, fresh = tmp_path / "dst", tmp_path / "fresh"
    assert _run(mode, _args(example, dst, src=src)).returncode == 0
    _rewrite_in_place(next((src / "rank_1").glob("*.ckpt")))
    _rewrite_in_place(next((src / "rank_5").glob("*.ckpt")))  # rank_1's data-parallel replica
    proc = _run(mode, [a for a in _args(example, dst, "--resume", src=src) if a != "--quiet"])
    assert proc.returncode == 0, proc.stderr
    assert "redoing target rank" in proc.stderr and "rank_1" in proc.stderr and "changed" in proc.stderr
    assert _run(mode, _args(example, fresh, src=src)).returncode == 0
    for r in range(4):
        rel = Path(f"rank_{r}") / f"checkpoint_{r}.ckpt"
        assert (dst / rel).read_bytes() == (fresh / rel).read_bytes(), rel
    assert (dst / "rank_0" / "checkpoint_0.ckpt").read_bytes() != (example / "expected" / "rank_0" /
                                                                   "checkpoint_0.ckpt").read_bytes()


@pytest.mark.parametrize("mode", MODES)
def test_directory_at_a_target_path_is_a_clear_error(example, tmp_path, mode):
    dst = tmp_path / "dst"
    (dst / "rank_1" / "checkpoint_1.ckpt").mkdir(parents=True)
    proc = _run(mode, _args(example, dst, "--overwrite"), timeout=60)
    assert proc.returncode != 0
    assert "checkpoint_1.ckpt is a directory" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not _finals(dst)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
@pytest.mark.parametrize("mode", MODES)
def test_full_disk_at_any_moment_ends_the_job_cleanly(example, tmp_path, mode):
    """Sizes chosen so the disk fills in the first target, between targets, and at the last one."""
    for size in ("1M", "3M", "5M", "6M", "7M"):
        mnt = tmp_path / f"small{size}"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
        try:
            proc = _run(mode, _args(example, mnt / "dst", "--max-buffer", "64K"), timeout=60)
            assert proc.returncode != 0, size
            assert "No space left on device" in proc.stderr and "checkpoint_" in proc.stderr, proc.stderr
            _wait_gone(mnt / "dst")
            _assert_nothing_incomplete(example, mnt / "dst")
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
