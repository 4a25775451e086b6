"""The safetensors reader and writer without MindSpore: byte-identical to `safetensors.numpy.save_file`,
boxes read by byte range, and every malformed header refused as one line naming the file and tensor."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from mpitrans.errors import CheckpointFormatError, MpitransError, UnsupportedError
from mpitrans.metadata import TensorMeta
from mpitrans.storage.formats import open_source, target_format
from mpitrans.storage.safetensors import SafetensorsSource, SafetensorsTarget, encode_header

st_numpy = pytest.importorskip("safetensors.numpy")

DTYPES = ["bool", "uint8", "int8", "int16", "uint16", "float16", "int32", "uint32", "float32", "float64",
          "int64", "uint64"]


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, dt in enumerate(DTYPES):
        shape = [(3, 5), (7,), (), (2, 0, 3), (4, 1, 2)][i % 5]
        out[f"p{(i * 7) % 12}_{dt}"] = rng.integers(0, 100, size=shape).astype(dt)
    out["ünïcode/\"quoted\"\\name\t"] = np.arange(6, dtype=np.float32).reshape(2, 3)
    return out


def _write(path, arrays: dict[str, np.ndarray], order: list[str]) -> None:
    metas = [TensorMeta(n, str(arrays[n].dtype), arrays[n].shape) for n in order]
    w = SafetensorsTarget(str(path), metas)
    for n in order:  # any piece sizes: split each tensor in two
        data = memoryview(np.ascontiguousarray(arrays[n]).reshape(-1).view(np.uint8))
        w.write(data[:len(data) // 2])
        w.write(data[len(data) // 2:])
    w.commit()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_writer_matches_save_file_byte_for_byte(tmp_path, seed):
    arrays = _arrays(seed)
    order = list(arrays)
    random.Random(seed).shuffle(order)  # the stream's order is not the file's
    _write(tmp_path / "ours.safetensors", arrays, order)
    st_numpy.save_file(arrays, str(tmp_path / "theirs.safetensors"), metadata={"format": "ms"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "theirs.safetensors").read_bytes()
    loaded = st_numpy.load_file(str(tmp_path / "ours.safetensors"))
    for n, a in arrays.items():
        assert loaded[n].dtype == a.dtype and loaded[n].shape == a.shape and loaded[n].tobytes() == a.tobytes()


def test_published_crc_matches_the_file_in_and_out_of_order(tmp_path):
    from mpitrans.storage.checksum import file_crc32c

    arrays = _arrays()
    metas = [TensorMeta(n, str(a.dtype), a.shape) for n, a in arrays.items()]
    for order in (list(arrays), sorted(arrays, key=lambda n: encode_header(metas, None)[0].find(n.encode()))):
        path = tmp_path / "x.safetensors"
        w = SafetensorsTarget(str(path), [TensorMeta(n, str(arrays[n].dtype), arrays[n].shape) for n in order])
        for n in order:
            w.write(memoryview(arrays[n].tobytes()))
        done = w.commit()
        assert (done.size, done.crc32c) == file_crc32c(path)


def test_empty_target_and_short_target(tmp_path):
    w = SafetensorsTarget(str(tmp_path / "e.safetensors"), [])
    w.commit()
    assert (tmp_path / "e.safetensors").read_bytes() == st_numpy.save({}, metadata={"format": "ms"})
    w = SafetensorsTarget(str(tmp_path / "s.safetensors"), [TensorMeta("a", "float32", (4,))])
    w.write(memoryview(bytes(8)))
    with pytest.raises(MpitransError, match="incomplete"):
        w.commit()
    assert list(tmp_path.iterdir()) == [tmp_path / "e.safetensors"]


def test_reader_lists_data_order_and_reads_boxes(tmp_path):
    arrays = {"w": np.arange(6 * 8, dtype=np.float32).reshape(6, 8), "b": np.arange(5, dtype=np.int64),
              "a": np.arange(24, dtype=np.float16).reshape(2, 3, 4)}
    path = tmp_path / "m.safetensors"
    st_numpy.save_file(arrays, str(path))
    src = open_source(str(path))
    assert isinstance(src, SafetensorsSource)
    assert [t.name for t in src.tensors()] == ["b", "w", "a"]  # save_file's layout: I64, F32, F16
    assert src.tensors()[1] == TensorMeta("w", "float32", (6, 8))
    for name, box in (("w", ((1, 4), (2, 7))), ("a", ((1, 2), (0, 3), (1, 3))), ("b", ((0, 5),))):
        want = arrays[name][tuple(slice(a, b) for a, b in box)]
        out = bytearray(want.nbytes)
        src.read_box(name, box, memoryview(out))
        assert bytes(out) == want.tobytes()
    with pytest.raises(MpitransError, match="'zz' is not in this file"):
        src.read_box("zz", ((0, 1),), memoryview(bytearray(4)))
    src.close()


def _raw(header: dict, data: bytes, pad: bool = True) -> bytes:
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


BAD = {
    "truncated length": (b"\x10\x00\x00", "truncated safetensors file"),
    "truncated header": (_raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"")[:20],
                         "truncated safetensors header"),
    "huge header": ((1 << 40).to_bytes(8, "little"), "above the 100000000-byte limit"),
    "not json": (b"\x04\x00\x00\x00\x00\x00\x00\x00{{{{", "not valid JSON"),
    "offset past the end": (_raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4)),
                            "tensor 'a': data_offsets \\[0, 8\\] run past the end of the data \\(4 bytes"),
    "lying dtype": (_raw({"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
                    "tensor 'a': the header says F64 of shape \\(2,\\) \\(16 bytes\\) but its data_offsets"),
    "overlap": (_raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
                "tensor 'b': data_offsets \\[4, 8\\] overlaps the tensor before it"),
    "gap": (_raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)), "leaves a gap"),
    "trailing bytes": (_raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(8)),
                       "4 bytes after the last tensor"),
    "bad shape": (_raw({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)),
                  "tensor 'a': shape \\[-1\\]"),
    "bad entry": (_raw({"a": {"dtype": "F32", "shape": [1]}}, bytes(4)), "tensor 'a': header entry needs"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_files_are_one_clear_error(tmp_path, case):
    blob, message = BAD[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(CheckpointFormatError, match=message) as info:
        SafetensorsSource(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unknown_dtype_is_unsupported(tmp_path):
    path = tmp_path / "f8.safetensors"
    path.write_bytes(_raw({"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, bytes(2)))
    with pytest.raises(UnsupportedError, match="tensor 'a': safetensors dtype 'F8_E4M3'"):
        SafetensorsSource(str(path))


def test_misordered_header_lists_data_order(tmp_path):
    """The Rust loader (MindSpore's transform uses it) orders tensors by offset, not by header order."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(_raw({"b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
                           "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(8)))
    assert [t.name for t in SafetensorsSource(str(path)).tensors()] == ["a", "b"]
    assert list(st_numpy.load_file(str(path))) == ["a", "b"]


def test_registry_knows_both_formats():
    assert target_format("safetensors").suffix == ".safetensors"
    with pytest.raises(MpitransError, match="unknown output format 'h5'"):
        target_format("h5")
