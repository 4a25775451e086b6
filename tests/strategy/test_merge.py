"""Pipeline-stage merging on its own: stale outputs, single files and what counts as a stage file.

Byte-for-byte agreement with `mindspore.merge_pipeline_strategys` is in `test_merge_oracle.py`.
"""

from __future__ import annotations

import os

import pytest

from mpitrans.errors import StrategyError
from mpitrans.fixtures.strategies import write_pipeline_stage_files, write_strategy_file
from mpitrans.strategy.codec import encode_strategy, read_strategy
from mpitrans.strategy.merge import (
    MERGED_FILE_NAME,
    list_stage_files,
    load_from_payload,
    load_payload,
    load_strategy,
    merge_pipeline_strategys,
)
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


def test_payload_loads_what_load_strategy_loads(tmp_path):
    """The job reads a strategy on one process and parses it on all (`load_payload`): a protobuf file, a
    JSON file and a directory of stage files give exactly `load_strategy`'s result, source name included."""
    pb = write_strategy_file(tmp_path / "s.ckpt", stage_params(1)[0])
    flat = {n: p for n, p in stage_params(1)[0].items() if "multi" not in n}  # JSON holds flat maps only
    js = write_strategy_file(tmp_path / "s.json", flat, fmt="json")
    stages = tmp_path / "stages"
    write_pipeline_stage_files(stages, stage_params(2))
    for path in (pb, js, str(stages)):
        loaded = load_strategy(path)
        back = load_from_payload(load_payload(path))
        assert back == loaded and back.source == loaded.source


def test_payload_errors_are_load_strategy_errors(tmp_path):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(StrategyError, match="empty"):
        load_payload(str(tmp_path / "empty.ckpt"))
    (tmp_path / "junk.ckpt").write_bytes(b"\xff\xff\xff")
    with pytest.raises(StrategyError):
        load_from_payload(load_payload(str(tmp_path / "junk.ckpt")))
    with pytest.raises(StrategyError, match="load_payload"):
        load_from_payload(b"Xjunk")
