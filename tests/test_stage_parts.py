"""Per-stage `_part` checkpoints against MindSpore: converting one pipeline stage from the command line,
and reading a folder of `_part` files back as a source (`mindspore.load_segmented_checkpoints`' view).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.storage.samples import our_save, random_raw
from tests.support.layouts import catalog
from tests.support.mpirun import mpirun
from tests.support.oracle import assert_same_tree, build_cases, read_checkpoint
from tests.support.parts_oracle import build_parts


def _stage_args(files, out) -> list[str]:
    return ["--src-checkpoint", str(files.src_dir), "--src-strategy", str(files.src_strategy),
            "--dst-strategy", str(files.dst_strategy), "--dst-checkpoint", str(out)]


@pytest.mark.parametrize("name", ["json_pp2_stage0_part", "pp3_stage2_part_shared"])
def test_one_stage_converts_like_mindspore_with_a_line_naming_the_stage(tmp_path, name):
    pytest.importorskip("mindspore")
    files = build_cases([catalog()[name]])[0]
    assert files.error is None and all("_part" in f for f in files.expected_files)
    out = tmp_path / "out"
    res = mpirun(2, _stage_args(files, out))
    assert res.returncode == 0, res.stderr
    stage = files.case.src_stage
    assert f"covers pipeline stage {stage} only" in res.stderr
    assert f"rank_x/checkpoint_x_part{stage} files" in res.stderr
    (out / "mpitrans_manifest.json").unlink()
    assert_same_tree(files.expected_dir, out)


def test_whole_model_strategy_lacking_a_parameter_says_it_is_read_as_stage_0(tmp_path):
    """MindSpore takes its `_part0` path here too, though the checkpoints hold the parameter the source
    strategy lacks: converted the same way, with a warning saying why the files are `_part0`."""
    pytest.importorskip("mindspore")
    files = build_cases([catalog()["src_strategy_lacks_param"]])[0]
    out = tmp_path / "out"
    res = mpirun(2, _stage_args(files, out))
    assert res.returncode == 0, res.stderr
    assert "lacks 1 parameter(s) the checkpoints hold (e.g. 'layer0.bias')" in res.stderr
    (out / "mpitrans_manifest.json").unlink()
    assert_same_tree(files.expected_dir, out)


# ------------------------------------------------------------------------------- a _part folder as source


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """pp2 training shards converted stage by stage into dp2·mp2 `_part` files, and MindSpore's full
    merge of those parts (each rank's parts merged into one file first)."""
    pytest.importorskip("mindspore")
    files = build_cases([catalog()["pp2_to_dp2mp2"]])[0]
    work = tmp_path_factory.mktemp("parts")
    folder, expected = build_parts(files.src_dir, files.src_stage_dir, work, str(files.dst_strategy), None)
    return files, folder, expected


def test_part_folder_reads_as_one_source_per_rank_like_mindspore(parts, tmp_path):
    files, folder, expected = parts
    assert sorted(p.name for p in (folder / "rank_0").iterdir()) == ["checkpoint_0_part0.ckpt",
                                                                    "checkpoint_0_part1.ckpt"]
    out = tmp_path / "out"
    res = mpirun(2, ["--src-checkpoint", str(folder), "--src-strategy", str(files.dst_strategy),
                     "--dst-checkpoint", str(out), "--quiet"])
    assert res.returncode == 0, res.stderr
    # the manifest fingerprints the part files: a second run with --resume keeps the target
    res = mpirun(2, ["--src-checkpoint", str(folder), "--src-strategy", str(files.dst_strategy),
                     "--dst-checkpoint", str(out), "--resume"])
    assert res.returncode == 0 and "redoing" not in res.stderr, res.stderr
    (out / "mpitrans_manifest.json").unlink()
    assert_same_tree(expected, out)
    kept = {r.name for r in read_checkpoint(out / "rank_0" / "checkpoint_0.ckpt")}
    assert kept == {p.name for p in files.case.params}  # every parameter, not one stage's


def test_parts_disagreeing_on_a_shape_stop_the_job_naming_both_files(tmp_path):
    rng = np.random.default_rng(3)
    our_save_to = tmp_path / "src" / "rank_0"
    our_save_to.mkdir(parents=True)
    our_save(our_save_to / "checkpoint_0_part0.ckpt", [("emb", "Float32", (2, 3), random_raw(rng, "Float32", (2, 3)))])
    our_save(our_save_to / "checkpoint_0_part1.ckpt", [("emb", "Float32", (3, 3), random_raw(rng, "Float32", (3, 3)))])
    out = tmp_path / "out"
    res = mpirun(2, ["--src-checkpoint", str(tmp_path / "src"), "--dst-checkpoint", str(out)])
    assert res.returncode != 0
    assert "checkpoint_0_part0.ckpt" in res.stderr and "checkpoint_0_part1.ckpt" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists() or not any(out.rglob("*.ckpt"))
