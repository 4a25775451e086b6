"""`_part` directories read as one source: discovery, the union, reads routed to the right file, and the
duplicate rules (same dtype/shape: the later part's copy, with a warning; different: an error naming both)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mpitrans.errors import MpitransError
from mpitrans.storage.discover import discover_sources
from mpitrans.storage.formats import open_source
from mpitrans.storage.parts import part_set, source_size
from tests.storage.samples import full_box, our_save, random_raw


def _write(path, specs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    our_save(path, specs)


def _spec(rng, name, shape=(2, 3), dtype="Float32"):
    return (name, dtype, shape, random_raw(rng, dtype, shape))


def _read(reader, name, shape, itemsize=4) -> bytes:
    out = bytearray(int(np.prod(shape)) * itemsize)
    reader.read_box(name, full_box(shape), memoryview(out))
    return bytes(out)


def test_part_set_orders_by_number_and_needs_one_stem():
    assert part_set(["c_0_part10.ckpt", "c_0_part2.ckpt"]) == ["c_0_part2.ckpt", "c_0_part10.ckpt"]
    assert part_set(["c_0_part0.ckpt"]) is None
    assert part_set(["c_0_part0.ckpt", "c_0.ckpt"]) is None
    assert part_set(["a_0_part0.ckpt", "b_0_part1.ckpt"]) is None


def test_rank_dir_of_parts_is_one_source_with_the_union(tmp_path):
    rng = np.random.default_rng(0)
    a, b, c = _spec(rng, "a"), _spec(rng, "b", (4,)), _spec(rng, "c")
    _write(tmp_path / "rank_0" / "checkpoint_0_part0.ckpt", [a, b])
    _write(tmp_path / "rank_0" / "checkpoint_0_part1.ckpt", [c])
    _write(tmp_path / "rank_1" / "checkpoint_1.ckpt", [a])
    found = discover_sources(str(tmp_path))
    assert found == {0: str(tmp_path / "rank_0"), 1: str(tmp_path / "rank_1" / "checkpoint_1.ckpt")}
    reader = open_source(found[0])
    assert [m.name for m in reader.tensors()] == ["a", "b", "c"]
    assert _read(reader, "c", (2, 3)) == c[3] and _read(reader, "b", (4,)) == b[3]
    # A peer's exported index opens the same union without indexing again.
    again = open_source(found[0], reader.export_index())
    assert again.tensors() == reader.tensors() and _read(again, "a", (2, 3)) == a[3]
    assert source_size(found[0]) == sum(p.stat().st_size for p in (tmp_path / "rank_0").iterdir())
    reader.close()
    again.close()


def test_duplicate_of_same_shape_takes_the_later_part_and_warns(tmp_path, caplog):
    rng = np.random.default_rng(1)
    first, later = _spec(rng, "emb"), _spec(rng, "emb")
    _write(tmp_path / "rank_0" / "checkpoint_0_part0.ckpt", [first, _spec(rng, "x")])
    _write(tmp_path / "rank_0" / "checkpoint_0_part1.ckpt", [later])
    with caplog.at_level(logging.WARNING, logger="mpitrans"):
        reader = open_source(str(tmp_path / "rank_0"))
    assert [m.name for m in reader.tensors()] == ["emb", "x"]
    assert _read(reader, "emb", (2, 3)) == later[3]
    assert "checkpoint_0_part0.ckpt" in caplog.text and "checkpoint_0_part1.ckpt" in caplog.text
    reader.close()


def test_duplicate_of_another_shape_names_both_files(tmp_path):
    rng = np.random.default_rng(2)
    _write(tmp_path / "rank_0" / "checkpoint_0_part0.ckpt", [_spec(rng, "emb", (2, 3))])
    _write(tmp_path / "rank_0" / "checkpoint_0_part1.ckpt", [_spec(rng, "emb", (3, 3))])
    with pytest.raises(MpitransError, match=r"'emb'.*checkpoint_0_part0\.ckpt.*checkpoint_0_part1\.ckpt"):
        open_source(str(tmp_path / "rank_0"))
