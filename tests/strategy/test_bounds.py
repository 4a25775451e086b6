"""Absurd strategies are refused by arithmetic while loading, before anything is sized from them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mpitrans.errors import StrategyError
from mpitrans.fixtures.strategies import write_pipeline_stage_files, write_strategy_file
from mpitrans.strategy.bounds import MAX_DEVICES
from mpitrans.strategy.merge import load_strategy
from tests.support.mpirun import mpirun, single

W = "model.w"


def _one(tmp_path: Path, spec: dict, fmt: str = "pb", stage: int = 0) -> str:
    return write_strategy_file(tmp_path / ("s.json" if fmt == "json" else "s.ckpt"), {W: spec}, stage=stage,
                               fmt=fmt)


@pytest.mark.parametrize("spec, words", [
    ({"dev_matrix": (0,), "tensor_map": (-1, -1)}, ["[0]", "below 1"]),
    ({"dev_matrix": (2, 0, 4), "tensor_map": (0, -1)}, ["[2, 0, 4]", "below 1"]),
    ({"dev_matrix": (1 << 24,), "tensor_map": (-1, -1)}, ["[16777216]", f"more than {MAX_DEVICES} devices"]),
    ({"dev_matrix": (1 << 20, 1 << 20), "tensor_map": (0, -1)}, ["[1048576, 1048576]", "more than"]),
    ({"dev_matrix": (1 << 11, 1 << 10), "tensor_map": (0, -1)}, ["more than"]),  # 2^21 in two factors
    ({"dev_matrix": (2, 4), "tensor_map": (2, -1)}, ["axis 2", "axes 0..1"]),
    ({"dev_matrix": (2, 4), "tensor_map": (0, -2)}, ["axis -2"]),
    ({"dev_matrix": (2, 4), "tensor_map": ((1, 5), -1)}, ["axis 5"]),  # multi-axis form
    ({"dev_matrix": (2, 4), "tensor_map": (0, -1), "opt_shard_step": 4, "opt_shard_size": -3},
     ["opt_weight_shard_size -3"]),
])
def test_absurd_layouts_are_refused_naming_file_and_parameter(tmp_path, spec, words):
    path = _one(tmp_path, spec)
    with pytest.raises(StrategyError) as err:
        load_strategy(path)
    msg = str(err.value)
    assert path in msg and repr(W) in msg and "\n" not in msg
    for word in words:
        assert word in msg, msg


def test_out_of_range_axis_in_json(tmp_path):
    path = _one(tmp_path, {"dev_matrix": (2,), "tensor_map": (3, -1)}, fmt="json")
    with pytest.raises(StrategyError, match=r"s\.json: parameter 'model\.w': tensor map \[3, -1\] names device "
                                            r"axis 3, but device matrix \[2\] has axes 0\.\.0"):
        load_strategy(path)


def test_stage_beyond_the_device_limit(tmp_path):
    path = _one(tmp_path, {"dev_matrix": (1 << 10,), "tensor_map": (-1,)}, stage=1 << 10)
    with pytest.raises(StrategyError, match="pipeline stage 1024 of 1024 device"):
        load_strategy(path)


def test_pipeline_stages_count_towards_the_limit(tmp_path):
    spec = {"dev_matrix": (1 << 19,), "tensor_map": (-1,)}
    write_pipeline_stage_files(tmp_path / "stages", [{W: spec}, {"model.v": spec}, {"model.u": spec}])
    with pytest.raises(StrategyError, match="pipeline stage 2 of 524288"):
        load_strategy(tmp_path / "stages")


def test_the_device_limit_is_inclusive(tmp_path):
    """Exactly MAX_DEVICES (every axis used, -1 opt sharding) loads; one factor of 2 more does not."""
    spec = {"dev_matrix": (1 << 10, 1 << 10), "tensor_map": (1, 0), "opt_shard_size": -1, "opt_shard_step": 1}
    assert load_strategy(_one(tmp_path, spec)).layouts[0][0] == W
    spec["dev_matrix"] = (2, 1 << 10, 1 << 10)
    with pytest.raises(StrategyError, match="more than 1048576 devices"):
        load_strategy(_one(tmp_path, spec))


# -- end to end: one clean line on every launch path, nothing written ----------------------------------


def _run(launcher: str, args: list[str]) -> subprocess.CompletedProcess:
    if launcher == "mpirun":
        return mpirun(2, args, timeout=60)
    return single(args, timeout=60, max_address_space=4 << 30)  # a regression must not eat the machine


@pytest.mark.parametrize("launcher", [pytest.param("mpirun", marks=pytest.mark.mpi), "single"])
@pytest.mark.parametrize("problem", ["dev-2^24", "dev-2^20x2^20", "dev-0", "json-axis-out-of-range",
                                     "src-dev-2^24"])
def test_absurd_strategy_fails_cleanly(example, tmp_path, launcher, problem):
    full = example / "full_dir"
    name = "model.tok_embeddings.embedding_weight"
    if problem == "json-axis-out-of-range":
        strategy = tmp_path / "bad.json"
        strategy.write_text(json.dumps({"parallel_layout_item": {name: {
            "dev_matrix": [2], "tensor_map": [3, -1], "field": 0, "opt_weight_shard_step": 0,
            "opt_weight_shard_size": 0}}}))
        expect = ["bad.json", name, "axis 3"]
    else:
        dev = {"dev-2^24": (1 << 24,), "src-dev-2^24": (1 << 24,), "dev-2^20x2^20": (1 << 20, 1 << 20),
               "dev-0": (0,)}[problem]
        strategy = Path(write_strategy_file(tmp_path / "bad.ckpt", {name: {"dev_matrix": dev,
                                                                            "tensor_map": (-1, -1)}}))
        expect = ["bad.ckpt", name, "below 1" if problem == "dev-0" else "more than 1048576 devices"]
    dst = tmp_path / "dst"
    args = ["--src-checkpoint", str(full), "--dst-checkpoint", str(dst), "--quiet"]
    if problem == "src-dev-2^24":
        args = ["--src-checkpoint", str(example / "src"), "--src-strategy", str(strategy),
                "--dst-strategy", str(example / "dst_strategy.ckpt"), "--dst-checkpoint", str(dst), "--quiet"]
    else:
        args += ["--dst-strategy", str(strategy)]
    proc = _run(launcher, args)
    assert proc.returncode != 0
    for word in expect:
        assert word in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "different models" not in proc.stderr, proc.stderr
    assert proc.stderr.count("mpitrans: error") == 1, proc.stderr
    assert not dst.exists()
