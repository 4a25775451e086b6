"""Structural twins (`CkptSource.twin`): a file whose every byte outside tensor contents equals an
indexed file's is opened with that file's index instead of being parsed, which must give exactly the index
parsing gives, and must refuse any file that differs outside its contents."""

from __future__ import annotations

import numpy as np
import pytest

from mpitrans.storage.ckpt import CheckpointWriter, index_checkpoint
from mpitrans.storage.ckpt.source import CkptSource, export_index

TENSORS = [("layer.w", "Float32", (4, 3)), ("layer.b", "Float16", (3,)), ("step", "Int32", ()),
           ("embedding", "BFloat16", (5, 2))]


def _write(path, seed: int, tensors=TENSORS, crc: bool = False) -> str:
    rng = np.random.default_rng(seed)
    with CheckpointWriter(path, crc_check=crc) as w:
        for name, dtype, shape in tensors:
            size = {"Float32": 4, "Float16": 2, "Int32": 4, "BFloat16": 2}[dtype]
            w.write_tensor(name, dtype, shape, rng.integers(0, 256, int(np.prod(shape)) * size, dtype=np.uint8))
    return str(path)


def test_a_replica_is_opened_with_the_indexed_files_index(tmp_path):
    first = CkptSource(_write(tmp_path / "a.ckpt", 1))
    other = _write(tmp_path / "b.ckpt", 2)
    twin = first.twin(other)
    assert twin is not None and twin.path == other
    assert twin.export_index() == export_index(index_checkpoint(other))
    out = memoryview(bytearray(4 * 3 * 4))
    twin.read_box("layer.w", ((0, 4), (0, 3)), out)
    with open(other, "rb") as f:
        data = f.read()
    assert bytes(out) in data  # the twin reads the other file's own bytes


@pytest.mark.parametrize("change", ["name", "shape", "dtype", "order", "crc"])
def test_files_differing_outside_contents_are_not_twins(tmp_path, change):
    first = CkptSource(_write(tmp_path / "a.ckpt", 1, crc=change == "crc"))
    tensors = list(TENSORS)
    if change == "name":
        tensors[0] = ("layer.v", *tensors[0][1:])  # same length: the file keeps its size
    elif change == "shape":
        tensors[0] = ("layer.w", "Float32", (3, 4))
    elif change == "dtype":
        tensors[2] = ("step", "Float32", ())
    elif change == "order":
        tensors[0], tensors[1] = tensors[1], tensors[0]
    other = _write(tmp_path / "b.ckpt", 2, tensors, crc=change == "crc")
    assert first.twin(other) is None


def test_a_flipped_header_byte_is_noticed(tmp_path):
    first_path = _write(tmp_path / "a.ckpt", 1)
    first = CkptSource(first_path)
    other = _write(tmp_path / "b.ckpt", 1)
    assert first.twin(other) is not None
    data = bytearray(open(other, "rb").read())
    entry = first.entry("layer.w")
    data[entry.records[0].offset - 1] ^= 0x01  # the last header byte before the tensor's content
    open(other, "wb").write(bytes(data))
    assert first.twin(other) is None
    data = bytearray(open(first_path, "rb").read())
    data[entry.records[0].offset] ^= 0xFF  # a content byte: still a twin
    open(other, "wb").write(bytes(data))
    assert first.twin(other) is not None
