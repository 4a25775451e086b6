"""Bad input and crashes under a real mpirun: clear errors, no hangs, no partial files, resumable runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.support.mpirun import mpirun

pytestmark = [pytest.mark.mpi]


def _args(example: Path, dst: Path, *extra: str, src: Path | None = None, src_strategy: str | None = None):
    return ["--src-checkpoint", str(src or example / "src"),
            "--src-strategy", src_strategy or str(example / "src_strategy.ckpt"),
            "--dst-checkpoint", str(dst), "--dst-strategy", str(example / "dst_strategy.ckpt"), "--quiet", *extra]


def _final_files(dst: Path) -> list[Path]:
    """Files under final names (temp files start with a dot)."""
    return [p for p in dst.rglob("*.ckpt") if not p.name.startswith(".")] if dst.exists() else []


def _assert_matches_mindspore(example: Path, dst: Path) -> None:
    for r in range(4):
        rel = Path(f"rank_{r}") / f"checkpoint_{r}.ckpt"
        assert (dst / rel).read_bytes() == (example / "expected" / rel).read_bytes(), rel


@pytest.mark.parametrize("stage", ["after-plan", "mid-transfer", "mid-write"])
def test_killed_rank_ends_job_and_resume_finishes_it(example, tmp_path, stage):
    dst = tmp_path / "dst"
    proc = mpirun(2, _args(example, dst, "--max-buffer", "64K"), env={"MPITRANS_FAULT": f"1:{stage}"},
                  timeout=60)
    assert proc.returncode != 0
    # Targets whose completion was recorded before the crash must be kept; a file that reached its final
    # name just before the kill, without a record, is rightly redone.
    recorded = {e["path"] for p in (dst / ".mpitrans_progress").glob("*.json")
                for e in json.loads(p.read_text())["files"].values()} \
        if (dst / ".mpitrans_progress").exists() else set()
    done_before = {dst / rel: (dst / rel).stat().st_ino for rel in recorded}
    assert not (dst / "mpitrans_manifest.json").exists()
    proc = mpirun(2, _args(example, dst, "--resume", "--json-summary", str(tmp_path / "s.json")), timeout=60)
    assert proc.returncode == 0, proc.stderr
    _assert_matches_mindspore(example, dst)
    assert not list(dst.rglob(".*.tmp-*")), "stale temp files must be cleaned"
    for path, inode in done_before.items():  # finished targets were kept, not rewritten (same inode)
        assert path.stat().st_ino == inode, f"{path} was rewritten"
    summary = json.loads((tmp_path / "s.json").read_text())
    assert sum(r["bytes_written"] for r in summary["ranks"]) > 0 or len(done_before) == 4
    manifest = json.loads((dst / "mpitrans_manifest.json").read_text())
    assert sorted(manifest["files"]) == ["0", "1", "2", "3"]


def test_existing_output_is_refused_without_overwrite(example, tmp_path):
    dst = tmp_path / "dst"
    assert mpirun(2, _args(example, dst)).returncode == 0
    proc = mpirun(2, _args(example, dst))
    assert proc.returncode != 0 and "already exists" in proc.stderr and "--overwrite" in proc.stderr
    assert mpirun(2, _args(example, dst, "--overwrite")).returncode == 0
    _assert_matches_mindspore(example, dst)


def test_verify_passes_then_names_the_corrupted_parameter(example, tmp_path):
    dst = tmp_path / "dst"
    assert mpirun(3, _args(example, dst)).returncode == 0
    verify_args = ["verify", *[a for a in _args(example, dst) if a != "--quiet"]]
    proc = mpirun(3, verify_args)
    assert proc.returncode == 0, proc.stderr
    assert "all 4 target files match" in proc.stdout
    # Flip a byte in the middle of the largest tensor's data of target 1.
    path = dst / "rank_1" / "checkpoint_1.ckpt"
    data = bytearray(path.read_bytes())
    data[200_000] ^= 0xFF
    path.write_bytes(bytes(data))
    proc = mpirun(2, verify_args)
    assert proc.returncode == 1
    assert "target rank 1" in proc.stdout and "differs" in proc.stdout


@pytest.mark.parametrize("problem", ["truncated", "not-a-strategy", "empty-rank-dir", "unsafe-prefix"])
def test_bad_input_fails_cleanly_on_every_rank(example, tmp_path, problem):
    src = tmp_path / "src"
    shutil.copytree(example / "src", src)
    strategy = str(example / "src_strategy.ckpt")
    extra: list[str] = []
    if problem == "truncated":
        victim = next((src / "rank_3").glob("*.ckpt"))
        victim.write_bytes(victim.read_bytes()[: os.path.getsize(victim) // 2])
        expect = ["rank_3"]
    elif problem == "not-a-strategy":
        (tmp_path / "bogus.ckpt").write_bytes(b"\x08\x01this is not a strategy\xff\xff")
        strategy = str(tmp_path / "bogus.ckpt")
        expect = ["bogus.ckpt"]
    elif problem == "empty-rank-dir":
        for r in (1, 5):
            for f in (src / f"rank_{r}").glob("*.ckpt"):
                f.unlink()
        expect = ["rank_1"]
    else:
        extra = ["--prefix", "../escape_"]
        expect = ["unsafe --prefix"]
    dst = tmp_path / "dst"
    proc = mpirun(2, _args(example, dst, *extra, src=src, src_strategy=strategy), timeout=60)
    assert proc.returncode != 0
    for word in expect:
        assert word in proc.stderr, proc.stderr
    assert proc.stderr.count("mpitrans: error") == 1, "reported once, by one rank"
    assert not _final_files(dst)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full_names_the_file_and_leaves_no_partial_file(example, tmp_path):
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mnt)], check=True)
    try:
        proc = mpirun(2, _args(example, mnt / "dst"), timeout=60)
        assert proc.returncode != 0
        assert "No space left on device" in proc.stderr and "checkpoint_" in proc.stderr
        for f in _final_files(mnt / "dst"):  # whatever exists under a final name is complete
            assert f.read_bytes() == (example / "expected" / f.relative_to(mnt / "dst")).read_bytes()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_destination_parameter_missing_from_source_is_an_error(example, tmp_path):
    from mpitrans.strategy.codec import read_strategy, write_strategy

    # In both strategies, so the source is not read as one pipeline stage of a larger model (where
    # MindSpore writes `_part` files for the parameters it has), yet in no checkpoint.
    args = _args(example, tmp_path / "out")
    for side in ("src", "dst"):
        strategy = read_strategy(str(example / f"{side}_strategy.ckpt"))
        _, layout = strategy.layouts[0]
        strategy.layouts.append(("model.extra_head.weight", layout))
        write_strategy(strategy, str(tmp_path / f"{side}_extra.ckpt"))
        args[args.index(f"--{side}-strategy") + 1] = str(tmp_path / f"{side}_extra.ckpt")
    proc = mpirun(2, args, timeout=60)
    assert proc.returncode != 0
    assert "model.extra_head.weight" in proc.stderr and "no source checkpoint" in proc.stderr
    assert not _final_files(tmp_path / "out")


def _encrypt_like_mindspore(path: Path) -> None:
    import mindspore as ms

    params = ms.load_checkpoint(str(path))
    path.unlink()
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(path), enc_key=b"0123456789abcdef")


@pytest.mark.parametrize("problem", ["encrypted", "corrupted", "json-wrong-keys", "different-model", "read-only-output",
                                     "not-divisible"])
def test_more_bad_inputs_fail_cleanly(example, tmp_path, problem):
    import subprocess

    src = tmp_path / "src"
    shutil.copytree(example / "src", src)
    src_strategy = str(example / "src_strategy.ckpt")
    dst_strategy = str(example / "dst_strategy.ckpt")
    dst = tmp_path / "dst"
    if problem == "encrypted":
        _encrypt_like_mindspore(next((src / "rank_2").glob("*.ckpt")))
        expect = ["rank_2", "looks encrypted", "--dec-key-file"]
    elif problem == "corrupted":
        victim = next((src / "rank_0").glob("*.ckpt"))
        data = bytearray(victim.read_bytes())
        data[5:9] = b"\xff\xff\xff\xff"
        victim.write_bytes(bytes(data))
        expect = ["rank_0"]
    elif problem == "json-wrong-keys":
        (tmp_path / "s.json").write_text('{"parallel_layouts": {}}')
        src_strategy = str(tmp_path / "s.json")
        expect = ["s.json"]
    elif problem == "different-model":
        from mpitrans.fixtures.strategies import write_strategy_file

        dst_strategy = write_strategy_file(tmp_path / "other.ckpt", {
            "encoder.w": {"dev_matrix": (2, 2), "tensor_map": (0, -1)}})
        expect = ["different models"]
    elif problem == "read-only-output":
        dst.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1M", "tmpfs", str(dst)], check=True)
        expect = ["Read-only file system"]
    else:
        from mpitrans.fixtures.strategies import write_strategy_file
        from mpitrans.storage.ckpt import CheckpointWriter

        src = tmp_path / "full.ckpt"
        with CheckpointWriter(str(src)) as w:
            w.write_tensor("odd.weight", "Float32", (6, 4), bytes(96))
        src_strategy = None
        dst_strategy = write_strategy_file(tmp_path / "d.ckpt", {"odd.weight": {"dev_matrix": (4,),
                                                                                 "tensor_map": (0, -1)}})
        expect = ["odd.weight", "not divisible"]
    args = ["--src-checkpoint", str(src), "--dst-checkpoint", str(dst), "--dst-strategy", dst_strategy, "--quiet"]
    if src_strategy:
        args += ["--src-strategy", src_strategy]
    try:
        proc = mpirun(2, args, timeout=60)
    finally:
        if problem == "read-only-output":
            subprocess.run(["umount", str(dst)], check=False)
    assert proc.returncode != 0
    for word in expect:
        assert word in proc.stderr, proc.stderr
    assert not _final_files(dst)
