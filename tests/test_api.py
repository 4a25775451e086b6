"""MindSpore-named functions against MindSpore itself: rank lists (incl. pipeline stages) and by-rank."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from math import prod

import numpy as np
import pytest

import mpitrans
from mpitrans.fixtures.random_layouts import random_layouts
from mpitrans.fixtures.strategies import write_pipeline_stage_files, write_strategy_file

ms = pytest.importorskip("mindspore")


def _dp_mp_params(names, dp, mp, opt=0):
    out = {}
    for i, n in enumerate(names):
        tmap = (0, -1) if i % 2 == 0 else (-1, 0)
        step, size = (mp, opt) if opt else (0, 0)
        out[n] = {"dev_matrix": (dp, mp), "tensor_map": tmap, "opt_shard_step": step, "opt_shard_size": size}
    return out


def _random_spec(rng, names):
    """One random device matrix for every name, each with its own 2-D tensor map."""
    return {n: lay.to_strategy_spec() for n, lay in random_layouts(rng, names, 2, profile="mesh").items()}


@pytest.mark.parametrize("seed", range(4))
def test_rank_list_matches_mindspore_on_random_strategy_files(tmp_path, seed):
    rng = random.Random(seed)
    names = [f"w{i}" for i in range(4)]
    for case in range(8):
        src = write_strategy_file(tmp_path / f"s{case}.ckpt", _random_spec(rng, names))
        dst_spec = _random_spec(rng, names)
        dst = write_strategy_file(tmp_path / f"d{case}.ckpt", dst_spec) if rng.random() < 0.8 else None
        n_dst = prod(next(iter(dst_spec.values()))["dev_matrix"]) if dst else 1
        for rank in range(n_dst):
            try:
                expected = [int(r) for r in ms.rank_list_for_transform(rank, src, dst)]
            except Exception:  # noqa: BLE001 - MindSpore refuses this pair (device counts not divisible)
                break
            assert mpitrans.rank_list_for_transform(rank, src, dst) == expected, (case, rank)


def test_rank_list_with_pipeline_stages(tmp_path):
    stage_params = [_dp_mp_params(["a", "b"], 2, 2), _dp_mp_params(["c", "d"], 2, 2)]
    write_pipeline_stage_files(tmp_path / "src_stages", stage_params)
    ms.merge_pipeline_strategys(str(tmp_path / "src_stages"), str(tmp_path / "src_merged.ckpt"))
    dst = write_strategy_file(tmp_path / "dst.ckpt", _dp_mp_params(["a", "b", "c", "d"], 1, 4))
    dst_stages = tmp_path / "dst_stages"
    write_pipeline_stage_files(dst_stages, [_dp_mp_params(["a", "b"], 1, 2), _dp_mp_params(["c", "d"], 1, 2)])
    ms.merge_pipeline_strategys(str(dst_stages), str(tmp_path / "dst_merged.ckpt"))
    for d, n in ((dst, 4), (str(tmp_path / "dst_merged.ckpt"), 4), (None, 1)):
        for rank in range(n):
            expected = [int(r) for r in ms.rank_list_for_transform(rank, str(tmp_path / "src_merged.ckpt"), d)]
            assert mpitrans.rank_list_for_transform(rank, str(tmp_path / "src_merged.ckpt"), d) == expected
            # a stage directory is merged in memory, with the same answer
            assert mpitrans.rank_list_for_transform(rank, str(tmp_path / "src_stages"), d) == expected


def test_transform_checkpoint_by_rank_matches_mindspore(tmp_path):
    rng = np.random.default_rng(0)
    names = ["w0", "w1", "adam_m.w0", "adam_m.w1"]
    full = [{"name": n, "data": ms.Tensor(rng.standard_normal((8, 8)).astype(np.float32),
                                          dtype=ms.bfloat16 if "adam" not in n else ms.float32)} for n in names]
    full.append({"name": "global_step", "data": ms.Tensor(np.array([3], np.int32))})
    (tmp_path / "full" / "rank_0").mkdir(parents=True)
    ms.save_checkpoint(full, str(tmp_path / "full" / "rank_0" / "m.ckpt"))
    src = write_strategy_file(tmp_path / "src.ckpt", _dp_mp_params(names, 2, 4, opt=2))
    dst = write_strategy_file(tmp_path / "dst.ckpt", _dp_mp_params(names, 1, 2))
    ms.transform_checkpoints(str(tmp_path / "full"), str(tmp_path / "src"), "m", None, src)
    for rank in range(2):
        ranks = ms.rank_list_for_transform(rank, src, dst)
        files = {int(r): str(tmp_path / "src" / f"rank_{r}" / f"m{r}.ckpt") for r in ranks}
        ms.transform_checkpoint_by_rank(rank, files, str(tmp_path / f"ms{rank}.ckpt"), src, dst)
        mpitrans.transform_checkpoint_by_rank(rank, files, str(tmp_path / f"ours{rank}.ckpt"), src, dst)
        assert (tmp_path / f"ours{rank}.ckpt").read_bytes() == (tmp_path / f"ms{rank}.ckpt").read_bytes()


def test_import_does_not_load_mindspore_or_mpi():
    code = ("import sys, mpitrans, mpitrans.job.run, mpitrans.cli, mpitrans.api; "
            "assert 'mindspore' not in sys.modules, 'mindspore imported'; "
            "assert 'mpi4py.MPI' not in sys.modules, 'MPI initialised at import'")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))


def test_transform_refuses_existing_outputs_unless_told_like_the_command_line(example, tmp_path):
    from mpitrans.errors import MpitransError

    args = (str(example / "src"), str(tmp_path / "dst"), str(example / "src_strategy.ckpt"),
            str(example / "dst_strategy.ckpt"))
    mpitrans.transform(*args)
    target = tmp_path / "dst" / "rank_1" / "checkpoint_1.ckpt"
    target.write_bytes(b"an earlier file")
    with pytest.raises(MpitransError, match="checkpoint_0.ckpt already exists"):
        mpitrans.transform(*args)
    assert target.read_bytes() == b"an earlier file"
    mpitrans.transform(*args, overwrite=True)
    assert target.read_bytes() == (example / "expected" / "rank_1" / "checkpoint_1.ckpt").read_bytes()
    # MindSpore's drop-in replaces existing files, as MindSpore does
    mpitrans.transform_checkpoints(str(example / "src"), str(tmp_path / "dst"), "checkpoint_",
                                   str(example / "src_strategy.ckpt"), str(example / "dst_strategy.ckpt"))
