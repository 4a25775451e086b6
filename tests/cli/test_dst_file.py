"""`--dst-file NAME`: a full merge's single file written as DIR/NAME (MindFormers' `transformed.ckpt`),
byte-identical to MindSpore's merge; refused, before anything is written, where it cannot apply."""

from __future__ import annotations

import pytest

from mpitrans.errors import MpitransError
from mpitrans.job.options import JobOptions
from tests.support.layouts import catalog
from tests.support.mpirun import mpirun
from tests.support.oracle import build_cases


@pytest.fixture(scope="module")
def cases():
    pytest.importorskip("mindspore")
    names = ("pp2_to_full", "pp2_to_dp2mp2")
    return dict(zip(names, build_cases([catalog()[n] for n in names]), strict=True))


def _src_args(files) -> list[str]:
    return ["--src-checkpoint", str(files.src_dir), "--src-strategy", str(files.src_stage_dir or files.src_strategy)]


def test_full_merge_named_by_dst_file_equals_mindspore(cases, tmp_path):
    files = cases["pp2_to_full"]
    out = tmp_path / "merged"
    res = mpirun(2, [*_src_args(files), "--dst-checkpoint", str(out), "--dst-file", "transformed.ckpt", "--quiet"])
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["mpitrans_manifest.json", "transformed.ckpt"]
    assert (out / "transformed.ckpt").read_bytes() == (files.expected_dir / "rank_0" / "checkpoint_0.ckpt").read_bytes()
    # verify and --resume find the file under the same name
    res = mpirun(2, ["verify", *_src_args(files), "--dst-checkpoint", str(out), "--dst-file", "transformed.ckpt"])
    assert res.returncode == 0, res.stdout + res.stderr
    res = mpirun(2, [*_src_args(files), "--dst-checkpoint", str(out), "--dst-file", "transformed.ckpt", "--resume"])
    assert res.returncode == 0, res.stderr


def test_dst_file_with_several_targets_is_refused_before_writing(cases, tmp_path):
    files = cases["pp2_to_dp2mp2"]
    out = tmp_path / "out"
    res = mpirun(2, [*_src_args(files), "--dst-strategy", str(files.dst_strategy), "--dst-checkpoint", str(out),
                     "--dst-file", "transformed.ckpt"])
    assert res.returncode != 0
    assert "--dst-file transformed.ckpt: names the single output of a full merge" in res.stderr
    assert "4 target ranks" in res.stderr
    assert not out.exists() or not any(out.rglob("*.ckpt"))


@pytest.mark.parametrize(("name", "fmt", "why"), [
    ("sub/transformed.ckpt", "ckpt", "plain file name"),
    ("..", "ckpt", "plain file name"),
    ("transformed.safetensors", "ckpt", "must end with .ckpt"),
    ("transformed.ckpt", "safetensors", "must end with .safetensors"),
])
def test_dst_file_name_is_checked(name, fmt, why):
    with pytest.raises(MpitransError, match=why):
        JobOptions("src", "dst", dst_file=name, output_format=fmt)


def test_dst_file_in_yaml_becomes_the_flag(tmp_path):
    from mpitrans.cli import config as cfg
    from mpitrans.cli.main import _transform_parser

    path = tmp_path / "merge.yaml"
    path.write_text("src_checkpoint: a\ndst_checkpoint: b\ndst_file: transformed.ckpt\n")
    argv = cfg.merge_config_with_args(cfg.load_config(str(path)), [])
    assert argv[-2:] == ["--dst-file", "transformed.ckpt"]
    assert _transform_parser().parse_args(argv).dst_file == "transformed.ckpt"
