"""The warning for tensors copied whole in a shape the destination does not fit (`plan/misfit.py`): Adam
states under an `only_trainable_params` source strategy. The output stays MindSpore's, byte for byte; a
clean job says nothing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mpitrans import strategy
from mpitrans.strategy.codec import write_strategy
from tests.support.filter_oracle import expected_filtered
from tests.support.layouts import MODEL, Case, _with_adam, dp_mp
from tests.support.mpirun import mpirun
from tests.support.oracle import assert_same_tree, build_cases

ADAM = _with_adam(MODEL)
WARNING = "absent from the source strategy are copied whole"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """dp2·mp2 training shards with Adam state, their full strategy, and the same strategy as
    `only_trainable_params=True` saves it (no adam_m./adam_v. entries)."""
    pytest.importorskip("mindspore")
    files = build_cases([Case(ADAM, dp_mp(2, 2, ADAM), dp_mp(1, 4, ADAM))])[0]
    full = strategy.load(str(files.src_strategy))
    trainable = replace(full, layouts=[(n, lay) for n, lay in full.layouts if not n.startswith("adam_")])
    path = tmp_path_factory.mktemp("strategy") / "only_trainable.ckpt"
    write_strategy(trainable, path)
    return files, path


def _run(files, src_strategy, out, dst_strategy=None):
    args = ["--src-checkpoint", str(files.src_dir), "--src-strategy", str(src_strategy), "--dst-checkpoint", str(out)]
    return mpirun(2, args + (["--dst-strategy", str(dst_strategy)] if dst_strategy else []))


@pytest.mark.parametrize("to_strategy", [True, False], ids=["dp1mp4", "full"])
def test_adam_shards_from_only_trainable_strategy_are_named_output_unchanged(built, tmp_path, to_strategy):
    files, trainable = built
    dst = str(files.dst_strategy) if to_strategy else None
    expected = expected_filtered(files.src_dir, tmp_path / "oracle", set(), str(trainable), dst)
    out = tmp_path / "out"
    res = _run(files, trainable, out, dst)
    assert res.returncode == 0, res.stderr
    assert WARNING in res.stderr
    assert "'adam_m.head.weight' is" in res.stderr and "'head.weight' is" in res.stderr
    assert "only_trainable_params=False" in res.stderr and "--drop-optimizer-state" in res.stderr
    assert res.stderr.count(WARNING) == 1  # one line for the job, not one per process or target
    (out / "mpitrans_manifest.json").unlink()
    assert_same_tree(expected, out)


def test_clean_job_has_no_such_warning(built, tmp_path):
    files, _ = built
    res = _run(files, files.src_strategy, tmp_path / "out", files.dst_strategy)
    assert res.returncode == 0, res.stderr
    assert WARNING not in res.stderr
