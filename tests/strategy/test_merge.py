"""Pipeline-stage merging on its own: stale outputs, single files and what counts as a stage file.

Byte-for-byte agreement with `mindspore.merge_pipeline_strategys` is in `test_merge_oracle.py`.
"""

from __future__ import annotations

import os

from mpitrans.fixtures.strategies import write_pipeline_stage_files, write_strategy_file
from mpitrans.strategy.codec import encode_strategy, read_strategy
from mpitrans.strategy.merge import MERGED_FILE_NAME, list_stage_files, load_strategy, merge_pipeline_strategys
from tests.strategy.samples import snapshot, stage_params


def test_stale_merged_file_is_ignored_and_kept(tmp_path):
    src = tmp_path / "strategy"
    write_pipeline_stage_files(src, stage_params(2))
    clean = encode_strategy(load_strategy(src))
    merge_pipeline_strategys(str(src), str(src / MERGED_FILE_NAME))
    (src / MERGED_FILE_NAME).write_bytes(open(src / MERGED_FILE_NAME, "rb").read())
    before = snapshot(src)
    assert encode_strategy(load_strategy(src)) == clean
    assert snapshot(src) == before
    # Merging again into the same place does not take the previous output as a stage file.
    merge_pipeline_strategys(str(src), str(src / "again.ckpt"))
    merge_pipeline_strategys(str(src), str(src / "again.ckpt"))
    assert open(src / "again.ckpt", "rb").read() == clean


def test_load_strategy_of_a_single_file(tmp_path):
    path = write_strategy_file(tmp_path / "s.ckpt", stage_params(1)[0])
    assert load_strategy(path) == read_strategy(path)


def test_hidden_files_and_subdirectories_are_not_stage_files(tmp_path):
    src = tmp_path / "src"
    write_pipeline_stage_files(src, stage_params(2))
    (src / ".hidden.ckpt").write_bytes(b"garbage")
    (src / "sub.ckpt").mkdir()
    assert sorted(os.path.basename(p) for p in list_stage_files(str(src))) == [
        "ckpt_strategy_rank_0.ckpt", "ckpt_strategy_rank_4.ckpt"]
