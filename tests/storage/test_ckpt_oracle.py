"""The .ckpt codec against MindSpore itself: same bytes out, same tensors in, only our errors on bad input.

Tensors are built from raw bytes (``convert_bytes_to_tensor``) so every dtype, bfloat16 and NaN bit patterns
included, is compared bit for bit; numpy views use a same-itemsize unsigned type to stay opaque. What needs no
MindSpore (box reads, damaged files, the writer) is in `test_ckpt.py`.
"""

from __future__ import annotations

import os
import zlib
from math import prod
from pathlib import Path

import numpy as np
import pytest

from mpitrans.errors import CheckpointFormatError, UnsupportedError
from mpitrans.storage import ckpt
from mpitrans.storage.ckpt import CheckpointWriter, index_checkpoint, read_box
from tests.storage.samples import DTYPES, Spec, assert_index_matches, our_save, random_box, random_raw

ms = pytest.importorskip("mindspore")
serialization = pytest.importorskip("mindspore.train.serialization")
from mindspore.train.checkpoint_pb2 import Checkpoint  # noqa: E402

MS_TYPES = {
    "Float16": ms.float16, "Float32": ms.float32, "Float64": ms.float64, "BFloat16": ms.bfloat16,
    "Int8": ms.int8, "Int16": ms.int16, "Int32": ms.int32, "Int64": ms.int64,
    "UInt8": ms.uint8, "UInt16": ms.uint16, "UInt32": ms.uint32, "UInt64": ms.uint64, "Bool": ms.bool_,
}


# ---------------------------------------------------------------------------------------------- helpers


def ms_tensor(dtype: str, shape: tuple[int, ...], raw: bytes):
    return ms.Tensor(serialization.Tensor_.convert_bytes_to_tensor(raw, tuple(shape), MS_TYPES[dtype]))


def ms_save(path: Path, specs: list[Spec], **kwargs) -> bytes:
    params = [{"name": n, "data": ms_tensor(d, s, r)} for n, d, s, r in specs]
    ms.save_checkpoint(params, str(path), **kwargs)
    os.chmod(path, 0o644)  # MindSpore leaves its output read-only
    return path.read_bytes()


@pytest.fixture
def small_records(monkeypatch: pytest.MonkeyPatch) -> int:
    """Make MindSpore and our writer cut records every KiB, so multi-record tensors stay tiny."""
    monkeypatch.setattr(serialization, "SLICE_SIZE", 1)
    monkeypatch.setattr(ckpt.format, "RECORD_BYTES", 1024)
    return 1024


def mixed_specs(rng: np.random.Generator) -> list[Spec]:
    shapes = [(), (1,), (5,), (3, 4), (2, 3, 5), (97, 3)]
    return [(f"p{i}.{d.lower()}", d, s, random_raw(rng, d, s))
            for i, (d, s) in enumerate((d, s) for d in DTYPES for s in shapes[(len(d) % 3):][:3])]


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_matches_mindspore_bytes(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(ckpt.ITEM_SIZES[dtype] * 31 + len(dtype))
    specs = [(f"{dtype}.{i}", dtype, s, random_raw(rng, dtype, s))
             for i, s in enumerate([(), (1,), (7,), (3, 5), (2, 3, 4), (2, 1, 3, 2)])]
    theirs = ms_save(tmp_path / "ms.ckpt", specs)
    assert_index_matches(tmp_path / "ms.ckpt", specs)
    assert our_save(tmp_path / "ours.ckpt", specs) == theirs
    loaded = ms.load_checkpoint(str(tmp_path / "ours.ckpt"))
    for name, _, shape, raw in specs:
        assert tuple(loaded[name].shape) == shape
        assert loaded[name].get_bytes() == raw


def test_bfloat16_special_bit_patterns_survive(tmp_path: Path) -> None:
    raw = np.array([0x0001, 0x7FC1, 0xFFFF, 0x8000, 0x7F80, 0xFF81, 0x3F80], np.uint16).tobytes()
    specs = [("bf", "BFloat16", (7,), raw)]
    theirs = ms_save(tmp_path / "ms.ckpt", specs)
    assert_index_matches(tmp_path / "ms.ckpt", specs)
    assert our_save(tmp_path / "ours.ckpt", specs) == theirs


def test_append_dict_scalars_and_bools(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    specs = [("w", "Float32", (2, 2), random_raw(rng, "Float32", (2, 2)))]
    params = [{"name": "w", "data": ms_tensor(*specs[0][1:])}]
    ms.save_checkpoint(params, str(tmp_path / "ms.ckpt"), append_dict={"epoch": 7, "lr": 0.25, "flag": True})
    idx = index_checkpoint(tmp_path / "ms.ckpt")
    assert [(e.name, e.dtype, e.shape) for e in idx] == [
        ("w", "Float32", (2, 2)), ("epoch", "Int64", ()), ("lr", "Float32", ()), ("flag", "Bool", ())]
    assert bytes(read_box(tmp_path / "ms.ckpt", idx["epoch"], ())) == np.int64(7).tobytes()
    assert bytes(read_box(tmp_path / "ms.ckpt", idx["lr"], ())) == np.float32(0.25).tobytes()
    assert bytes(read_box(tmp_path / "ms.ckpt", idx["flag"], ())) == b"\x01"
    ours = our_save(tmp_path / "ours.ckpt", specs + [
        ("epoch", "Int64", (), np.int64(7).tobytes()), ("lr", "Float32", (), np.float32(0.25).tobytes()),
        ("flag", "Bool", (), b"\x01")])
    assert ours == (tmp_path / "ms.ckpt").read_bytes()


def test_zero_element_tensors_are_dropped_like_mindspore(tmp_path: Path) -> None:
    specs = [("a", "Float32", (0, 3), b""), ("b", "Int8", (2,), b"\x01\x02"), ("c", "Int32", (0,), b"")]
    theirs = ms_save(tmp_path / "ms.ckpt", specs)
    assert our_save(tmp_path / "ours.ckpt", specs) == theirs
    assert_index_matches(tmp_path / "ours.ckpt", specs)


def test_record_header_matches_protobuf_serialization() -> None:
    for name, dtype, shape, n in [("a", "Float32", (2, 3), 24), ("é" * 70, "BFloat16", (), 2),
                                  ("x", "Int64", (300, 1, 70000), 0)]:
        msg = Checkpoint()
        value = msg.value.add()
        value.tag = name
        value.tensor.dims.extend(shape)
        value.tensor.tensor_type = dtype
        value.tensor.tensor_content = b"\x00" * n
        assert ckpt.encode_record_header(name, dtype, shape, n) + b"\x00" * n == msg.SerializeToString()


# ---------------------------------------------------------------------------------------------- records


def test_multi_record_tensors_match_mindspore(tmp_path: Path, small_records: int) -> None:
    rng = np.random.default_rng(2)
    specs = [(f"t{i}", d, s, random_raw(rng, d, s)) for i, (d, s) in enumerate([
        ("Float32", (97, 3)),  # 1164 bytes: two records, cut mid-row
        ("Float16", (300, 7)),  # 4200 bytes: five records
        ("Int64", (128,)),  # exactly one full record
        ("UInt8", (1025,)),  # one byte spills into a second record
        ("BFloat16", (3, 700)),
        ("Bool", (5,)),
    ])]
    theirs = ms_save(tmp_path / "ms.ckpt", specs)
    idx = assert_index_matches(tmp_path / "ms.ckpt", specs)
    assert [len(e.records) for e in idx] == [2, 5, 1, 2, 5, 1]
    for e in idx:
        assert all(r.nbytes <= small_records for r in e.records)
        assert [r.start for r in e.records] == [i * small_records for i in range(len(e.records))]
    assert our_save(tmp_path / "ours.ckpt", specs) == theirs
    assert our_save(tmp_path / "crc.ckpt", specs, crc_check=True) == ms_save(tmp_path / "mscrc.ckpt", specs,
                                                                             crc_check=True)
    loaded = ms.load_checkpoint(str(tmp_path / "ours.ckpt"))
    assert all(loaded[n].get_bytes() == r for n, _, _, r in specs)


def test_streamed_writes_in_odd_chunks_equal_whole_writes(tmp_path: Path, small_records: int) -> None:
    rng = np.random.default_rng(3)
    specs = [("a", "Float64", (41, 9), random_raw(rng, "Float64", (41, 9))),
             ("b", "Int16", (1500,), random_raw(rng, "Int16", (1500,)))]
    whole = our_save(tmp_path / "whole.ckpt", specs)
    with CheckpointWriter(tmp_path / "streamed.ckpt") as w:
        for name, dtype, shape, raw in specs:
            w.begin_tensor(name, dtype, shape)
            pos = 0
            while pos < len(raw):
                n = int(rng.integers(1, 700))
                w.write(memoryview(raw)[pos:pos + n])
                pos += n
            w.write(b"")
    assert (tmp_path / "streamed.ckpt").read_bytes() == whole == ms_save(tmp_path / "ms.ckpt", specs)


def test_async_save_layout_rows_split_unevenly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MindSpore's numpy path (async save) splits with np.array_split along axis 0 instead of by bytes."""
    monkeypatch.setattr(serialization, "SLICE_SIZE", 1)
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 2**32, (10, 77), dtype=np.uint32)  # 3080 bytes -> 4 uneven row groups
    serialization._exec_save(str(tmp_path / "async.ckpt"), {"w": [[10, 77], "Int32", arr]})
    idx = index_checkpoint(tmp_path / "async.ckpt")
    assert [r.nbytes // (77 * 4) for r in idx["w"].records] == [3, 3, 2, 2]
    for _ in range(30):
        box = random_box(rng, (10, 77))
        assert bytes(read_box(tmp_path / "async.ckpt", idx["w"], box)) == \
            arr[tuple(slice(a, b) for a, b in box)].tobytes()


# ---------------------------------------------------------------------------------------------- crc


def test_crc_trailer_is_recognized_and_verified(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    specs = mixed_specs(rng)
    theirs = ms_save(tmp_path / "ms.ckpt", specs, crc_check=True)
    assert theirs[-17:-10] == b"crc_num"
    idx = index_checkpoint(tmp_path / "ms.ckpt", verify_crc=True)
    assert idx.crc == zlib.crc32(theirs[:-17])
    assert_index_matches(tmp_path / "ms.ckpt", specs)
    ours = our_save(tmp_path / "ours.ckpt", specs, crc_check=True)
    assert ours == theirs
    loaded = ms.load_checkpoint(str(tmp_path / "ours.ckpt"), crc_check=True)
    assert all(loaded[n].get_bytes() == r for n, _, _, r in specs)
    assert index_checkpoint(tmp_path / "ours.ckpt").crc == idx.crc
    plain = our_save(tmp_path / "plain.ckpt", specs)
    assert index_checkpoint(tmp_path / "plain.ckpt", verify_crc=True).crc is None
    assert plain == ours[:-17]

    damaged = bytearray(theirs)
    damaged[idx.entries[3].records[0].offset] ^= 0x10  # a content byte: structure stays valid
    (tmp_path / "bad.ckpt").write_bytes(damaged)
    index_checkpoint(tmp_path / "bad.ckpt")  # without verification the damage is invisible
    with pytest.raises(CheckpointFormatError, match="CRC mismatch"):
        index_checkpoint(tmp_path / "bad.ckpt", verify_crc=True)


# ---------------------------------------------------------------------------------------------- refusals


def test_encrypted_checkpoint_is_refused(tmp_path: Path) -> None:
    specs = [("w", "Float32", (300,), bytes(1200))]
    for mode in ("AES-GCM", "AES-CBC"):
        ms_save(tmp_path / "enc.ckpt", specs, enc_key=b"0123456789abcdef", enc_mode=mode)
        with pytest.raises(CheckpointFormatError, match=r"enc\.ckpt.*looks encrypted.*--dec-key-file"):
            index_checkpoint(tmp_path / "enc.ckpt")


def test_string_value_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "str.ckpt"
    params = [{"name": "w", "data": ms_tensor("Int8", (2,), b"\x01\x02")}]
    ms.save_checkpoint(params, str(path), append_dict={"note": "hello", "step": 3})
    with pytest.raises(UnsupportedError, match=r"str\.ckpt.*'note'.*string"):
        index_checkpoint(path)
    idx = index_checkpoint(path, skip_unsupported=True)
    assert idx.names() == ["w", "step"] and list(idx.skipped) == ["note"]


def build(path: Path, values: list[tuple[str, list[int], str, bytes]]) -> bytes:
    """A file from protobuf messages, one per record, for layouts MindSpore's own saver never produces."""
    data = b""
    for name, dims, dtype, content in values:
        msg = Checkpoint()
        value = msg.value.add()
        value.tag = name
        value.tensor.dims.extend(dims)
        value.tensor.tensor_type = dtype
        value.tensor.tensor_content = content
        data += msg.SerializeToString()
    path.write_bytes(data)
    return data


def test_map_tensor_is_unsupported(tmp_path: Path) -> None:
    msg = Checkpoint()
    value = msg.value.add()
    value.tag = "table"
    part = value.maptensor.tensor.add()
    part.tensor_type = "Int32"
    part.tensor_content = b"\x00" * 4
    # MindSpore may write one map parameter as several consecutive records with the same name.
    data = build(tmp_path / "m.ckpt", [("w", [1], "Int8", b"\x05")]) + msg.SerializeToString() * 2
    data += build(tmp_path / "m.ckpt", [("z", [], "Int8", b"\x06")])
    (tmp_path / "m.ckpt").write_bytes(data)
    with pytest.raises(UnsupportedError, match=r"m\.ckpt.*'table'.*MapTensor"):
        index_checkpoint(tmp_path / "m.ckpt")
    idx = index_checkpoint(tmp_path / "m.ckpt", skip_unsupported=True)
    assert idx.names() == ["w", "z"] and list(idx.skipped) == ["table"]


@pytest.mark.parametrize("dtype", ["Complex64", "Int4", "Float33"])
def test_unknown_or_unsupported_types(tmp_path: Path, dtype: str) -> None:
    build(tmp_path / "t.ckpt", [("w", [2], dtype, b"\x00" * 16)])
    with pytest.raises(UnsupportedError, match=rf"'w'.*{dtype}"):
        index_checkpoint(tmp_path / "t.ckpt")
    with pytest.raises(UnsupportedError):
        CheckpointWriter(tmp_path / "x.ckpt").begin_tensor("w", dtype, (2,))


def test_legacy_scalar_dims_zero(tmp_path: Path) -> None:
    build(tmp_path / "s.ckpt", [("s", [0], "Float32", np.float32(2.5).tobytes()), ("e", [0], "Int8", b"")])
    idx = index_checkpoint(tmp_path / "s.ckpt")
    assert idx["s"].shape == ()
    assert bytes(read_box(tmp_path / "s.ckpt", idx["s"], ())) == np.float32(2.5).tobytes()
    assert idx["e"].shape == (0,) and idx["e"].records == ()
    assert float(ms.load_checkpoint(str(tmp_path / "s.ckpt"))["s"].asnumpy()) == 2.5


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([("w", [2, 3], "Float32", b"\x00" * 20)], r"'w'.*holds 20 content bytes.*needs 24"),
        ([("w", [2], "Int8", b"\x00" * 3)], r"'w'.*more than the 2 bytes"),
        ([("w", [2], "Int8", b"\x00"), ("w", [3], "Int8", b"\x00")], r"'w'.*continuation record"),
        ([("w", [1], "Int8", b"\x00"), ("v", [1], "Int8", b"\x00"), ("w", [1], "Int8", b"\x00")],
         r"'w'.*twice"),
        ([("w", [-1], "Int8", b"")], r"'w'.*negative"),
        ([("w", [1], "Float 32", b"\x00")], r"not a MindSpore type name"),
        ([("w", [1] * 70, "Int8", b"\x00")], r"more than 64 dimensions"),
    ],
)
def test_inconsistent_records(tmp_path: Path, values: list, message: str) -> None:
    build(tmp_path / "bad.ckpt", values)
    with pytest.raises(CheckpointFormatError, match=r"bad\.ckpt.*" + message):
        index_checkpoint(tmp_path / "bad.ckpt")


# ---------------------------------------------------------------------------------------------- real size


@pytest.mark.slow
def test_tensor_over_mindspore_record_limit(tmp_path: Path) -> None:
    """A real >512 MiB tensor saved by MindSpore: two records cut mid-row, reproduced byte for byte."""
    shape = (8193, 32769)  # float16: 536,952,834 bytes, just over MindSpore's 512 MiB record size
    n = prod(shape)
    # A prime-length random block repeated at memcpy speed; its period never lines up with a row.
    values = np.resize(np.random.default_rng(9).integers(0, 2**16, 1_000_003, dtype=np.uint16), n)
    raw = memoryview(values).cast("B")
    path = tmp_path / "big_ms.ckpt"
    params = [{"name": "emb", "data": ms.Tensor(values.view(np.float16).reshape(shape))},
              {"name": "tail", "data": ms_tensor("Int32", (3,), b"\x01\x00\x00\x00" * 3)}]
    ms.save_checkpoint(params, str(path))
    del params
    entry = index_checkpoint(path)["emb"]
    assert entry.shape == shape and [r.nbytes for r in entry.records] == [ckpt.RECORD_BYTES,
                                                                         n * 2 - ckpt.RECORD_BYTES]
    grid = values.reshape(shape)
    cut_row = ckpt.RECORD_BYTES // (shape[1] * 2)
    for box in [((cut_row - 1, cut_row + 2), (0, shape[1])), ((0, shape[0]), (100, 104)),
                ((cut_row, cut_row + 1), (32000, 32769)), ((8000, 8193), (5, 32769))]:
        got = np.frombuffer(read_box(path, entry, box), np.uint16)
        assert np.array_equal(got, grid[box[0][0]:box[0][1], box[1][0]:box[1][1]].reshape(-1)), box
    ours = tmp_path / "big_ours.ckpt"
    with CheckpointWriter(ours) as w:
        w.begin_tensor("emb", "Float16", shape)
        step = 64 << 20
        for pos in range(0, len(raw), step):
            w.write(raw[pos:pos + step])
        w.write_tensor("tail", "Int32", (3,), b"\x01\x00\x00\x00" * 3)
    assert os.path.getsize(ours) == os.path.getsize(path)
    with open(path, "rb") as a, open(ours, "rb") as b:
        while chunk := a.read(64 << 20):
            assert chunk == b.read(len(chunk))
