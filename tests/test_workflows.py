"""Training -> deployment workflows against MindSpore: parameter filters (`--exclude`, `--include`,
`--filter-out-param-prefix`, `--drop-optimizer-state`) and the choice of checkpoint in `rank_x/`.

A filtered conversion must equal MindSpore's conversion of the same sources with those parameters
removed (`load_checkpoint(choice_func=...)` + `save_checkpoint`, then `transform_checkpoints`), byte for
byte, under mpirun and in one process.
"""

from __future__ import annotations

import logging

import pytest

import mpitrans
from mpitrans.errors import MpitransError
from mpitrans.job.transport import LocalTransport
from mpitrans.plan.filters import ParamFilter
from mpitrans.plan.planner import Planner
from tests.support.filter_oracle import expected_filtered
from tests.support.layouts import catalog
from tests.support.mpirun import mpirun
from tests.support.oracle import assert_same_tree, build_cases

CASES = ("pp2_to_dp2mp2", "opt_dp4mp2_to_full")


@pytest.fixture(scope="module")
def built():
    pytest.importorskip("mindspore")
    cases = catalog()
    return dict(zip(CASES, build_cases([cases[n] for n in CASES]), strict=True))


def _args(files) -> list[str]:
    src = files.src_stage_dir or files.src_strategy
    dst = files.dst_stage_dir or files.dst_strategy
    out = ["--src-checkpoint", str(files.src_dir)]
    out += ["--src-strategy", str(src)] if src else []
    return out + (["--dst-strategy", str(dst)] if dst else [])


def _oracle(files, tmp_path, keep: ParamFilter):
    drop = {p.name for p in files.case.params if not keep.keeps(p.name)}
    assert drop, "the filter must remove something for the test to mean anything"
    src = str(files.src_strategy) if files.src_strategy else None
    dst = str(files.dst_strategy) if files.dst_strategy else None
    return expected_filtered(files.src_dir, tmp_path / "oracle", drop, src, dst)


@pytest.mark.parametrize("name", CASES)
def test_drop_optimizer_state_matches_mindspore_under_mpirun(built, tmp_path, name):
    files = built[name]
    expected = _oracle(files, tmp_path, ParamFilter(drop_optimizer_state=True))
    out = tmp_path / "out"
    res = mpirun(3, [*_args(files), "--dst-checkpoint", str(out), "--drop-optimizer-state", "--quiet"])
    assert res.returncode == 0, res.stderr
    (out / "mpitrans_manifest.json").unlink()
    assert_same_tree(expected, out)


def test_globs_and_prefix_in_one_process_match_mindspore(built, tmp_path):
    files = built["opt_dp4mp2_to_full"]
    keep = ParamFilter.build(exclude="layer1.*", exclude_prefix="adam_v")
    expected = _oracle(files, tmp_path, keep)
    out = tmp_path / "out"
    src = str(files.src_strategy)
    mpitrans.transform(str(files.src_dir), str(out), src, None, comm=LocalTransport(), write_manifest=False,
                       exclude=("layer1.*",), exclude_prefix=("adam_v",))
    assert_same_tree(expected, out)


def test_yaml_filter_out_param_prefix_and_include(built, tmp_path):
    files = built["pp2_to_dp2mp2"]
    keep = ParamFilter.build(include=["*.weight", "*.bias", "*.table"], exclude_prefix="adam_")
    expected = _oracle(files, tmp_path, keep)
    out = tmp_path / "out"
    cfg = tmp_path / "t.yaml"
    cfg.write_text("filter_out_param_prefix: adam_\ninclude: '*.weight,*.bias,*.table'\n")
    res = mpirun(2, ["--config", str(cfg), *_args(files), "--dst-checkpoint", str(out), "--quiet"])
    assert res.returncode == 0, res.stderr
    (out / "mpitrans_manifest.json").unlink()
    assert_same_tree(expected, out)


# ------------------------------------------------------------------------------------------ pure parts


def test_filter_semantics():
    f = ParamFilter.build(drop_optimizer_state=True)
    gone = ["adam_m.w", "adam_v.w", "accu_grads.w", "global_step", "learning_rate", "scale_sense",
            "loss_scale", "epoch_num", "step_num", "current_iterator_step", "last_overflow_iterator_step",
            "beta1_power", "beta2_power"]
    assert not any(f.keeps(n) for n in gone)
    assert all(f.keeps(n) for n in ["w", "model.adam_m", "learning_rate_schedule.w", "adam_mx"])
    g = ParamFilter.build(include=["model.*"], exclude=["*.bias,*norm*"])
    assert [n for n in ["model.a.weight", "model.a.bias", "head.w", "model.norm.w"] if g.keeps(n)] == [
        "model.a.weight"]
    with pytest.raises(MpitransError, match="leave none"):
        ParamFilter.build(include="nothing*").apply(["a", "b"])


def test_excluded_parameters_are_in_no_plan(example):
    from mpitrans import strategy
    from mpitrans.storage.discover import discover_sources
    from mpitrans.storage.formats import open_source

    metas = {}
    for g, path in discover_sources(str(example / "src")).items():
        reader = open_source(path)
        metas[g] = reader.tensors()
        reader.close()
    names = [t.name for t in metas[0]]
    src, dst = strategy.load(str(example / "src_strategy.ckpt")), strategy.load(str(example / "dst_strategy.ckpt"))
    keep = ParamFilter.build(exclude=names[-1])
    planner = Planner(src, dst, metas, param_filter=keep)
    planned = {t.name for tr in planner.target_ranks() for t in planner.plan(tr).tensors}
    assert names[-1] not in planned and planned


# ------------------------------------------------------------------------------------------ rank_x choice


def _touch(d, *names):
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        (d / n).write_bytes(b"")


def test_name_order_is_kept_and_a_numeric_newer_file_is_named(tmp_path):
    from mpitrans.storage.discover import discover_sources

    _touch(tmp_path / "rank_0", "glm_rank_0-9_4.ckpt", "glm_rank_0-10_4.ckpt", "glm_rank_0-graph.meta")
    notes: dict[int, str] = {}
    found = discover_sources(str(tmp_path), notes=notes)
    assert found[0].endswith("glm_rank_0-9_4.ckpt")  # MindSpore's rule for .ckpt: name order
    assert "glm_rank_0-10_4.ckpt" in notes[0] and "--src-postfix 10_4" in notes[0]


def test_src_postfix_picks_like_mindformers(tmp_path):
    from mpitrans.storage.discover import discover_sources

    _touch(tmp_path / "rank_0", "glm_rank_0-9_4.ckpt", "glm_rank_0-10_4.ckpt", "glm_rank_0-31_4.ckpt")
    _touch(tmp_path / "rank_1", "glm_rank_1-9_4.ckpt", "glm_rank_1-31_4.ckpt", "glm_rank_1-1_31_4.ckpt")
    notes: dict[int, str] = {}
    found = discover_sources(str(tmp_path), "31_4", notes)
    assert found[0].endswith("glm_rank_0-31_4.ckpt") and found[1].endswith("glm_rank_1-31_4.ckpt")
    assert 1 in notes and 0 not in notes
    with pytest.raises(MpitransError, match="no checkpoint ends with '7_7'"):
        discover_sources(str(tmp_path), "7_7")


def test_choice_is_logged_at_warning_level(tmp_path, caplog, example):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(example / "src", src)
    first = sorted((src / "rank_0").glob("*.ckpt"))[0]
    shutil.copy(first, first.with_name("aaa-9_1.ckpt"))
    shutil.move(first, first.with_name("aaa-10_1.ckpt"))
    with caplog.at_level(logging.WARNING, logger="mpitrans"):
        mpitrans.transform(str(src), str(tmp_path / "out"), str(example / "src_strategy.ckpt"),
                           str(example / "dst_strategy.ckpt"), comm=LocalTransport())
    assert any("aaa-9_1.ckpt" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# ------------------------------------------------------------------------------------------ compatibility


def test_mindspore_2_10_convert_names_are_aliases():
    ms = pytest.importorskip("mindspore")
    import inspect

    for ours, theirs in (("convert_checkpoints", "transform_checkpoints"),
                         ("convert_checkpoint_by_rank", "transform_checkpoint_by_rank"),
                         ("rank_list_for_convert", "rank_list_for_transform")):
        assert getattr(mpitrans, ours) is getattr(mpitrans, theirs)
        ms_fn = getattr(ms, ours, None) or getattr(ms.parallel, ours)
        assert list(inspect.signature(getattr(mpitrans, ours)).parameters) == list(
            inspect.signature(ms_fn).parameters)


def test_mindformers_flags_verbatim(example, tmp_path):
    from tests.support.mpirun import python_m

    common = ["--src_checkpoint", str(example / "full" / "model.ckpt"), "--src_ckpt_strategy", "None",
              "--dst_strategy", str(example / "dst_strategy.ckpt"), "--process_num", "2"]
    res = python_m([*common, "--dst_checkpoint", str(tmp_path / "a"), "--world_size", "4"])
    assert res.returncode == 0, res.stderr
    assert "process_num 2 is ignored" in res.stderr and "mpirun -n" in res.stderr
    assert sorted(p.name for p in (tmp_path / "a").glob("rank_*")) == [f"rank_{i}" for i in range(4)]
    res = python_m([*common, "--dst_checkpoint", str(tmp_path / "b"), "--world_size", "8"])
    assert res.returncode == 1 and "--world-size 8: the destination strategy describes 4" in res.stderr
    assert not (tmp_path / "b" / "rank_0").exists()
    cfg = tmp_path / "mf.yaml"
    cfg.write_text("auto_trans_ckpt: True\ntransform_process_num: 1\nsrc_ckpt_strategy: None\n")
    res = python_m(["--config", str(cfg), *common[:2], "--dst-checkpoint", str(tmp_path / "c"),
                    "--dst-strategy", str(example / "dst_strategy.ckpt")])
    assert res.returncode == 0, res.stderr
    assert "auto_trans_ckpt is a MindFormers training switch and is ignored" in res.stderr


# ------------------------------------------------------------------------------------------ per-stage _part


def test_one_stage_part_conversion_from_the_command_line(tmp_path):
    pytest.importorskip("mindspore")
    files = build_cases([catalog()["pp2_stage1_part"]])[0]
    out = tmp_path / "out"
    res = mpirun(2, ["--src-checkpoint", str(files.src_dir), "--src-strategy", str(files.src_strategy),
                     "--dst-strategy", str(files.dst_strategy), "--dst-checkpoint", str(out)])
    assert res.returncode == 0, res.stderr
    assert "covers pipeline stage 1 only" in res.stderr
    (out / "mpitrans_manifest.json").unlink()
    assert_same_tree(files.expected_dir, out)
