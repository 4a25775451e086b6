"""Finding and naming source ranks: folded spans, and why a `rank_x` entry yields no checkpoint."""

from __future__ import annotations

import shutil

import pytest

from mpitrans.errors import MpitransError
from mpitrans.storage.discover import (
    choose_by_suffix,
    describe_missing,
    discover_sources,
    rank_entry_problem,
    rank_span,
)
from tests.support.mpirun import mpirun, single


def test_rank_span_folds_runs_and_cuts_long_lists():
    assert rank_span([7, 0, 1, 2, 3, 3]) == "rank_0..rank_3, rank_7"
    assert rank_span([4, 5]) == "rank_4, rank_5"
    assert rank_span(range(0, 20, 2)) == "rank_0, rank_2, rank_4, rank_6, rank_8, rank_10, and 4 more"
    assert len(rank_span(range(0, 1 << 20, 2))) < 120


def test_rank_entry_problem(tmp_path):
    (tmp_path / "rank_0").mkdir()
    (tmp_path / "rank_0" / "a.ckpt").write_bytes(b"x")
    (tmp_path / "rank_1").write_text("a file")
    (tmp_path / "rank_2").mkdir()
    (tmp_path / "rank_2" / "notes.txt").write_text("no checkpoint here")
    assert rank_entry_problem(str(tmp_path), 0) is None
    assert rank_entry_problem(str(tmp_path), 1) == "a file, not a directory"
    assert rank_entry_problem(str(tmp_path), 2) == "a directory without a .ckpt or .safetensors file"
    assert rank_entry_problem(str(tmp_path), 3) is None


def test_missing_ranks_are_described_compactly(tmp_path):
    (tmp_path / "rank_2").write_text("not a directory")
    (tmp_path / "rank_5").mkdir()
    msg = describe_missing(str(tmp_path), {1: {0}, 2: {0}, 3: {0}, 5: {1, 2}, 9: ()})
    assert msg.startswith("rank_1..rank_3 (needed by target rank(s) 0); rank_5 (needed by target rank(s) 1, 2); "
                          "rank_9"), msg
    assert "rank_2 is a file, not a directory" in msg
    assert "rank_5 is a directory without a .ckpt or .safetensors file" in msg
    assert len(describe_missing(str(tmp_path), {g: {0} for g in range(1, 1 << 20)})) < 200
    (tmp_path / "one.ckpt").write_bytes(b"x")
    assert "one.ckpt is one file, read as the full checkpoint of rank_0" in describe_missing(
        str(tmp_path / "one.ckpt"), {1: {0}})


@pytest.mark.parametrize("launcher", [pytest.param("mpirun", marks=pytest.mark.mpi), "single"])
@pytest.mark.parametrize("problem", ["only-rank-4-to-7", "rank-2-is-a-file"])
def test_missing_rank_dirs_are_named(example, tmp_path, launcher, problem):
    """Issue 10, item 8: name the absent `rank_x`, not "none of the parameters ... in the strategy" or
    another rank."""
    src = tmp_path / "src"
    shutil.copytree(example / "src", src)
    if problem == "only-rank-4-to-7":
        for r in range(4):
            shutil.rmtree(src / f"rank_{r}")
        words = ["target rank 0: none of the source checkpoints it is built from (rank_0..rank_3) was found",
                 "not visible to any process: rank_0..rank_3"]
    else:
        shutil.rmtree(src / "rank_2")
        (src / "rank_2").write_text("oops")
        words = ["rank_2 (needed by target rank(s) 2)", "rank_2 is a file, not a directory"]
    dst = tmp_path / "dst"
    args = ["--src-checkpoint", str(src), "--src-strategy", str(example / "src_strategy.ckpt"),
            "--dst-checkpoint", str(dst), "--dst-strategy", str(example / "dst_strategy.ckpt"), "--quiet"]
    proc = mpirun(2, args, timeout=90) if launcher == "mpirun" else single(args, timeout=90)
    assert proc.returncode != 0
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "none of the parameters" not in proc.stderr, proc.stderr
    assert proc.stderr.count("mpitrans: error") == 1, proc.stderr
    assert not dst.exists()


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"x")


def test_safetensors_choice_follows_epoch_and_step(tmp_path):
    """MindSpore's rule: the highest (epoch, step), numerically - `net-10_5` beats `net-9_100`."""
    _touch(tmp_path / "rank_0", "net-9_100.safetensors", "net-10_5.safetensors", "net-2_900.safetensors")
    _touch(tmp_path / "rank_1", "only.safetensors")
    found = discover_sources(str(tmp_path))
    assert found == {0: str(tmp_path / "rank_0" / "net-10_5.safetensors"),
                     1: str(tmp_path / "rank_1" / "only.safetensors")}
    single = tmp_path / "rank_0" / "net-9_100.safetensors"
    assert discover_sources(str(single)) == {0: str(single)}


def test_file_suffix_names_one_file(tmp_path):
    d = tmp_path / "rank_0"
    _touch(d, "llama_rank_0-1_100.safetensors", "llama_rank_0-1_200.safetensors", "llama_rank_0-2_100.safetensors")
    paths = sorted(str(p) for p in d.iterdir())
    assert choose_by_suffix(paths, "1_200", ".safetensors").endswith("-1_200.safetensors")
    assert choose_by_suffix(paths, "-2_100", ".safetensors").endswith("-2_100.safetensors")
    assert discover_sources(str(tmp_path), postfix="1_100")[0].endswith("0-1_100.safetensors")
    with pytest.raises(MpitransError, match="no file ends with '9_9.safetensors'"):
        choose_by_suffix(paths, "9_9", ".safetensors")
    with pytest.raises(MpitransError, match="matches several files"):
        choose_by_suffix(paths, "00", ".safetensors")


def test_mixed_formats_are_refused_naming_both(tmp_path):
    _touch(tmp_path / "rank_0", "a.ckpt")
    _touch(tmp_path / "rank_1", "b.safetensors")
    with pytest.raises(MpitransError, match=r"mixes checkpoint formats: .*rank_0/a.ckpt and .*rank_1/b.safetensors"):
        discover_sources(str(tmp_path))
    (tmp_path / "rank_0" / "a.ckpt").unlink()
    _touch(tmp_path / "rank_1", "c.ckpt")
    with pytest.raises(MpitransError, match=r"rank_1/c.ckpt and .*rank_1/b.safetensors"):
        discover_sources(str(tmp_path))
