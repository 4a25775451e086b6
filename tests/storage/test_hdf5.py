"""The HDF5 store's storage layer: a C-order element run cut into hyperslabs, a part file written from
pieces of any size (bfloat16 kept as its bit pattern), the master's virtual datasets, and the reader
(plain h5py files too); incomplete or broken stores refused as one error."""

from __future__ import annotations

import os
import random
from math import prod

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpitrans.errors import CheckpointFormatError, MpitransError
from mpitrans.metadata import TensorMeta
from mpitrans.storage.formats import format_of_path, open_source
from mpitrans.storage.hdf5 import Hdf5PartTarget, Hdf5Source, flat_boxes, write_master

h5py = pytest.importorskip("h5py")

SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)


@settings(max_examples=300, deadline=None)
@given(SHAPES, st.data())
def test_flat_boxes_cover_the_run_once_in_order(shape, data):
    n = prod(shape)
    start = data.draw(st.integers(0, n))
    stop = data.draw(st.integers(start, n))
    flat = np.arange(n).reshape(shape)
    seen = []
    boxes = list(flat_boxes(shape, start, stop))
    assert len(boxes) <= 2 * max(len(shape), 1)
    for box, count in boxes:
        part = flat[tuple(slice(a, b) for a, b in box)].reshape(-1)
        assert part.size == count
        seen.extend(part.tolist())
    assert seen == list(range(start, stop))


TENSORS = [TensorMeta("emb.w", "bfloat16", (5, 7)), TensorMeta("scalar", "float32", ()),
           TensorMeta("empty", "int32", (0, 3)), TensorMeta("mask", "bool", (6,)),
           TensorMeta("x/y.z", "float64", (2, 3, 4)), TensorMeta("n", "int8", (3, 1, 2))]


def _content(seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    out = {t.name: rng.randbytes(t.nbytes) for t in TENSORS}
    out["mask"] = bytes(rng.choice((0, 1)) for _ in range(6))
    return out


def _write_part(path, content, seed=0, tensors=TENSORS):
    rng = random.Random(seed)
    w = Hdf5PartTarget(str(path), tensors)
    stream = b"".join(content[t.name] for t in tensors)
    pos = 0
    while pos < len(stream):  # pieces of any size, elements cut in the middle too
        k = rng.randint(1, 11)
        w.write(memoryview(stream[pos:pos + k]))
        pos += k
    return w.commit()


@pytest.mark.parametrize("seed", range(3))
def test_part_and_master_hold_every_byte(tmp_path, seed):
    content = _content(seed)
    done = _write_part(tmp_path / "part-0.h5", content, seed)
    assert done.size == os.path.getsize(tmp_path / "part-0.h5")
    assert [p.name for p in tmp_path.iterdir()] == ["part-0.h5"]  # no temporary left
    write_master(str(tmp_path / "model.h5"), {"part-0.h5": TENSORS}, [t.name for t in TENSORS], {"k": "v"})
    with h5py.File(tmp_path / "model.h5", "r") as f:
        assert f.attrs["k"] == "v"
        for t in TENSORS:
            d = f[t.name]
            assert d.is_virtual and d.attrs["mpitrans_dtype"] == t.dtype and d.shape == t.shape
            assert d[()].tobytes() == content[t.name], t.name
        assert f["emb.w"].dtype.str == "<u2"
    with h5py.File(tmp_path / "part-0.h5", "r") as f:
        assert f["emb.w"].chunks and f["x/y.z"].chunks
    src = open_source(str(tmp_path / "model.h5"))
    assert src.tensors() == TENSORS  # the master's order
    for t in TENSORS:
        if t.shape and all(t.shape):
            box = tuple((d // 3, d) for d in t.shape)
            out = bytearray(prod(b - a for a, b in box) * (t.nbytes // prod(t.shape)))
            src.read_box(t.name, box, memoryview(out))
            full = np.frombuffer(content[t.name], dtype=np.uint8).reshape(*t.shape, -1)
            assert bytes(out) == full[tuple(slice(a, b) for a, b in box)].tobytes(), t.name
    out = bytearray(4)
    src.read_box("scalar", (), memoryview(out))
    assert bytes(out) == content["scalar"]
    peer = Hdf5Source(str(tmp_path / "model.h5"), src.export_index())
    assert peer.tensors() == TENSORS
    src.close()


def test_plain_h5py_files_are_sources(tmp_path):
    a = np.arange(24, dtype="<f4").reshape(4, 6)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["w"] = a
        f.create_group("g")["b"] = np.arange(3, dtype="<i8")
    assert format_of_path(str(tmp_path / "plain.h5")).name == "hdf5"
    src = open_source(str(tmp_path / "plain.h5"))
    assert src.tensors() == [TensorMeta("g/b", "int64", (3,)), TensorMeta("w", "float32", (4, 6))]
    out = bytearray(2 * 2 * 4)
    src.read_box("w", ((1, 3), (4, 6)), memoryview(out))
    assert bytes(out) == a[1:3, 4:6].tobytes()


def test_unreadable_types_and_files(tmp_path):
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["z"] = np.zeros(3, dtype="complex64")
    with pytest.raises(CheckpointFormatError, match=r"c\.h5: dataset 'z' has type"):
        open_source(str(tmp_path / "c.h5"))
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(CheckpointFormatError, match=r"junk\.h5: not a readable HDF5 file"):
        open_source(str(tmp_path / "junk.h5"))


def test_master_without_its_part_is_refused(tmp_path):
    _write_part(tmp_path / "part-0.h5", _content(0))
    write_master(str(tmp_path / "model.h5"), {"part-0.h5": TENSORS}, [t.name for t in TENSORS], {})
    os.unlink(tmp_path / "part-0.h5")
    with pytest.raises(CheckpointFormatError, match=r"model\.h5: dataset '.*' maps to part-0\.h5, which is missing"):
        open_source(str(tmp_path / "model.h5"))


def test_incomplete_or_aborted_part_is_never_published(tmp_path):
    w = Hdf5PartTarget(str(tmp_path / "part-0.h5"), TENSORS)
    w.write(memoryview(b"\0" * 10))
    with pytest.raises(MpitransError, match="incomplete"):
        w.commit()
    assert list(tmp_path.iterdir()) == []
    w = Hdf5PartTarget(str(tmp_path / "part-0.h5"), TENSORS)
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_part_writer_holds_one_dataset_open(tmp_path):
    """Each open dataset keeps a chunk cache: holding all of them made memory grow with the tensor count
    (842 MiB peak for 96 x 16 MiB tensors); one at a time it stays flat (80 MiB)."""
    tensors = [TensorMeta(f"w{i}", "float32", (64, 64)) for i in range(20)]
    w = Hdf5PartTarget(str(tmp_path / "part-0.h5"), tensors)
    for _ in tensors:
        w.write(memoryview(bytes(64 * 64 * 4)))
        assert len(h5py.h5f.get_obj_ids(w._file.id, h5py.h5f.OBJ_DATASET)) <= 1
    w.commit()
