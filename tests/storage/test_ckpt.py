"""The .ckpt codec against MindSpore itself: same bytes out, same tensors in, only our errors on bad input.

Tensors are built from raw bytes (``convert_bytes_to_tensor``) so every dtype, bfloat16 and NaN bit patterns
included, is compared bit for bit; numpy views use a same-itemsize unsigned type to stay opaque.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zlib
from math import prod
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpitrans.errors import CheckpointFormatError, MpitransError, UnsupportedError
from mpitrans.storage import ckpt
from mpitrans.storage.ckpt import CheckpointWriter, index_checkpoint, read_box, read_box_into

ms = pytest.importorskip("mindspore")
serialization = pytest.importorskip("mindspore.train.serialization")
from mindspore.train.checkpoint_pb2 import Checkpoint  # noqa: E402

DTYPES = list(ckpt.ITEM_SIZES)
OPAQUE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
MS_TYPES = {
    "Float16": ms.float16, "Float32": ms.float32, "Float64": ms.float64, "BFloat16": ms.bfloat16,
    "Int8": ms.int8, "Int16": ms.int16, "Int32": ms.int32, "Int64": ms.int64,
    "UInt8": ms.uint8, "UInt16": ms.uint16, "UInt32": ms.uint32, "UInt64": ms.uint64, "Bool": ms.bool_,
}

Spec = tuple[str, str, tuple[int, ...], bytes]  # name, dtype, shape, raw C-order bytes


# ---------------------------------------------------------------------------------------------- helpers


def random_raw(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> bytes:
    n = prod(shape) * ckpt.ITEM_SIZES[dtype]
    if dtype == "Bool":
        return rng.integers(0, 2, n, dtype=np.uint8).tobytes()
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def ms_tensor(dtype: str, shape: tuple[int, ...], raw: bytes):
    return ms.Tensor(serialization.Tensor_.convert_bytes_to_tensor(raw, tuple(shape), MS_TYPES[dtype]))


def ms_save(path: Path, specs: list[Spec], **kwargs) -> bytes:
    params = [{"name": n, "data": ms_tensor(d, s, r)} for n, d, s, r in specs]
    ms.save_checkpoint(params, str(path), **kwargs)
    os.chmod(path, 0o644)  # MindSpore leaves its output read-only
    return path.read_bytes()


def our_save(path: Path, specs: list[Spec], **kwargs) -> bytes:
    with CheckpointWriter(path, **kwargs) as w:
        for name, dtype, shape, raw in specs:
            w.write_tensor(name, dtype, shape, raw)
    return path.read_bytes()


def opaque(raw: bytes | bytearray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(bytes(raw), dtype=OPAQUE[ckpt.ITEM_SIZES[dtype]]).reshape(shape)


def full_box(shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    return tuple((0, d) for d in shape)


def random_box(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    box = []
    for d in shape:
        a, b = sorted(int(x) for x in rng.integers(0, d + 1, 2))
        box.append((a, b))
    return tuple(box)


def assert_index_matches(path: Path, specs: list[Spec]) -> ckpt.CheckpointIndex:
    """Every non-empty spec is indexed in order and reads back bit for bit."""
    idx = index_checkpoint(path)
    kept = [s for s in specs if prod(s[2]) > 0]  # MindSpore writes no record for empty tensors
    assert idx.names() == [s[0] for s in kept]
    for name, dtype, shape, raw in kept:
        entry = idx[name]
        assert (entry.dtype, entry.shape, entry.itemsize) == (dtype, shape, ckpt.ITEM_SIZES[dtype])
        assert bytes(read_box(path, entry, full_box(shape))) == raw
    return idx


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


def test_records_cut_mid_element_read_correctly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our reader must not assume record boundaries fall on rows or even on elements."""
    monkeypatch.setattr(ckpt.format, "RECORD_BYTES", 13)
    rng = np.random.default_rng(4)
    specs = [("m", "Float64", (6, 5), random_raw(rng, "Float64", (6, 5))),
             ("s", "Int32", (), random_raw(rng, "Int32", ()))]
    our_save(tmp_path / "odd.ckpt", specs)
    idx = assert_index_matches(tmp_path / "odd.ckpt", specs)
    assert len(idx["m"].records) == -(-240 // 13)
    full = opaque(read_box(tmp_path / "odd.ckpt", idx["m"], full_box((6, 5))), "Float64", (6, 5))
    for _ in range(50):
        box = random_box(rng, (6, 5))
        got = read_box(tmp_path / "odd.ckpt", idx["m"], box)
        assert bytes(got) == full[tuple(slice(a, b) for a, b in box)].tobytes()


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


# ---------------------------------------------------------------------------------------------- read_box


@pytest.mark.parametrize(("gather", "window"), [(8 * 1024, 16 << 20), (0, 16 << 20), (1 << 20, 48), (64, 7)])
def test_read_box_matches_numpy_slicing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gather: int,
                                        window: int) -> None:
    """Every read strategy (run by run, gathered windows, windows below a slab) gives numpy's answer."""
    monkeypatch.setattr(ckpt.boxread, "GATHER_BYTES_PER_RUN", gather)
    monkeypatch.setattr(ckpt.boxread, "READ_WINDOW", window)
    monkeypatch.setattr(ckpt.format, "RECORD_BYTES", 1000)
    rng = np.random.default_rng(gather + window)
    cases = [("Float16", (13,)), ("Int32", (6, 7)), ("BFloat16", (4, 5, 6)), ("Float64", (3, 1, 4, 5)),
             ("Bool", (2, 3, 4, 5, 2)), ("UInt8", (40, 33)), ("Int64", (1,)), ("Float32", ())]
    specs = [(f"t{i}", d, s, random_raw(rng, d, s)) for i, (d, s) in enumerate(cases)]
    path = tmp_path / "boxes.ckpt"
    our_save(path, specs)
    idx = index_checkpoint(path)
    with open(path, "rb") as f:
        for name, dtype, shape, raw in specs:
            full = opaque(raw, dtype, shape)
            for trial in range(40):
                box = random_box(rng, shape) if trial else full_box(shape)
                want = full[tuple(slice(a, b) for a, b in box)].tobytes()
                assert bytes(read_box(f, idx[name], box)) == want, (name, box)
                out = np.empty(len(want), np.uint8)
                read_box_into(f.fileno(), idx[name], box, memoryview(out))
                assert out.tobytes() == want


def test_read_box_into_accepts_typed_buffers_and_checks_size(tmp_path: Path) -> None:
    raw = np.arange(24, dtype=np.int32).tobytes()
    our_save(tmp_path / "a.ckpt", [("a", "Int32", (4, 6), raw)])
    entry = index_checkpoint(tmp_path / "a.ckpt")["a"]
    fd = os.open(tmp_path / "a.ckpt", os.O_RDONLY)
    try:
        out = np.zeros((4, 2), np.int32)
        read_box_into(fd, entry, ((0, 4), (2, 4)), memoryview(out))
        assert (out == np.arange(24, dtype=np.int32).reshape(4, 6)[:, 2:4]).all()
        assert ckpt.box_nbytes(entry, ((0, 4), (2, 4))) == 32
        with pytest.raises(ValueError, match="needs 32"):
            read_box_into(fd, entry, ((0, 4), (2, 4)), memoryview(bytearray(31)))
        with pytest.raises(ValueError, match="writable"):
            read_box_into(fd, entry, ((0, 4), (2, 4)), memoryview(bytes(32)))
        with pytest.raises(ValueError, match="outside"):
            read_box_into(fd, entry, ((0, 5), (0, 1)), memoryview(bytearray(20)))
        with pytest.raises(ValueError, match="dims"):
            read_box_into(fd, entry, ((0, 4),), memoryview(bytearray(96)))
        read_box_into(fd, entry, ((1, 1), (0, 6)), memoryview(bytearray(0)))
        assert bytes(read_box(fd, entry, ((1, 2), (0, 6)))) == raw[24:48]
    finally:
        os.close(fd)


def test_contiguous_box_is_one_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = bytes(range(256)) * 12
    our_save(tmp_path / "c.ckpt", [("c", "UInt8", (12, 16, 16), raw)])
    entry = index_checkpoint(tmp_path / "c.ckpt")["c"]
    calls = []
    real = os.preadv
    monkeypatch.setattr(ckpt.boxread.os, "preadv", lambda fd, bufs, off: calls.append(off) or real(fd, bufs, off))
    assert bytes(read_box(tmp_path / "c.ckpt", entry, ((3, 9), (0, 16), (0, 16)))) == raw[768:2304]
    assert bytes(read_box(tmp_path / "c.ckpt", entry, ((5, 6), (2, 7), (0, 16)))) == raw[1312:1392]
    assert len(calls) == 2
    calls.clear()
    # A column slice with small gaps is gathered from one window read, not one read per row.
    got = read_box(tmp_path / "c.ckpt", entry, ((0, 12), (0, 16), (4, 6)))
    assert bytes(got) == np.frombuffer(raw, np.uint8).reshape(12, 16, 16)[:, :, 4:6].tobytes()
    assert len(calls) == 1


def test_file_larger_than_2gib_is_indexed_from_headers(tmp_path: Path) -> None:
    """A sparse file with MindSpore's record layout: indexing touches headers only, reads land far out."""
    n = 5 * ckpt.RECORD_BYTES + 10
    path = tmp_path / "big.ckpt"
    marks = {0: b"head", ckpt.RECORD_BYTES - 2: b"span", 4 * ckpt.RECORD_BYTES + 7: b"far!", n - 3: b"end"}
    with open(path, "wb") as f:
        for start in range(0, n, ckpt.RECORD_BYTES):
            size = min(ckpt.RECORD_BYTES, n - start)
            f.write(ckpt.encode_record_header("huge", "UInt8", (n,), size))
            content_at = f.tell()
            for pos, data in marks.items():  # the part of each mark that falls inside this record
                lo, hi = max(pos, start), min(pos + len(data), start + size)
                if lo < hi:
                    f.seek(content_at + lo - start)
                    f.write(data[lo - pos:hi - pos])
            f.seek(content_at + size)
        f.write(ckpt.encode_record_header("after", "Int16", (2,), 4) + b"\x01\x02\x03\x04")
    assert os.path.getsize(path) > 2**31
    idx = index_checkpoint(path)
    assert idx.names() == ["huge", "after"]
    huge = idx["huge"]
    assert huge.shape == (n,) and len(huge.records) == 6 and huge.records[-1].nbytes == 10
    for pos, data in marks.items():
        assert bytes(read_box(path, huge, ((pos, pos + len(data)),))) == data
    assert bytes(read_box(path, idx["after"], ((0, 2),))) == b"\x01\x02\x03\x04"


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
        with pytest.raises(CheckpointFormatError, match=r"enc\.ckpt.*encrypted"):
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


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match=r"empty\.ckpt.*empty"):
        index_checkpoint(tmp_path / "empty.ckpt")
    (tmp_path / "trailer.ckpt").write_bytes(b"crc_num" + bytes(10))
    with pytest.raises(CheckpointFormatError, match="no parameters"):
        index_checkpoint(tmp_path / "trailer.ckpt")
    with pytest.raises(CheckpointFormatError, match="cannot open"):
        index_checkpoint(tmp_path / "absent.ckpt")
    (tmp_path / "text.ckpt").write_bytes(b"hello world, not protobuf")
    with pytest.raises(CheckpointFormatError, match=r"text\.ckpt"):
        index_checkpoint(tmp_path / "text.ckpt")


def test_file_truncated_after_indexing_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "t.ckpt"
    our_save(path, [("w", "Int32", (100,), bytes(400))])
    entry = index_checkpoint(path)["w"]
    os.truncate(path, 200)
    with pytest.raises(CheckpointFormatError, match=r"t\.ckpt.*'w'.*truncated"):
        read_box(path, entry, ((0, 100),))


# ---------------------------------------------------------------------------------------------- damage


@pytest.fixture(scope="module")
def sample_file() -> tuple[bytes, list[Spec]]:
    """A small file with scalars, multi-record tensors and a CRC trailer: every structure a cut can hit."""
    rng = np.random.default_rng(7)
    specs = [("a.weight", "Float32", (5, 3), random_raw(rng, "Float32", (5, 3))),
             ("s", "Int64", (), random_raw(rng, "Int64", ())),
             ("bf", "BFloat16", (41,), random_raw(rng, "BFloat16", (41,))),
             ("flag", "Bool", (3,), random_raw(rng, "Bool", (3,)))]
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        mp.setattr(ckpt.format, "RECORD_BYTES", 24)
        data = our_save(Path(d) / "s.ckpt", specs, crc_check=True)
    return data, specs


def check_damaged(path: Path, specs: list[Spec]) -> None:
    """Damage may go unnoticed, but must only ever surface as our own errors."""
    try:
        idx = index_checkpoint(path, verify_crc=False)
    except MpitransError:
        return
    for entry in idx:
        try:
            read_box(path, entry, full_box(entry.shape))
        except MpitransError:
            pass


def test_every_truncation_is_an_error_or_a_clean_prefix(tmp_path: Path, sample_file) -> None:
    data, specs = sample_file
    path = tmp_path / "cut.ckpt"
    originals = {n: r for n, _, _, r in specs}
    clean_prefixes = 0
    for cut in range(1, len(data)):
        path.write_bytes(data[:cut])
        try:
            idx = index_checkpoint(path)
        except CheckpointFormatError:
            continue
        clean_prefixes += 1
        assert idx.names() == [s[0] for s in specs][: len(idx)]
        for entry in idx:
            assert bytes(read_box(path, entry, full_box(entry.shape))) == originals[entry.name]
    assert clean_prefixes == len(specs)  # cut exactly after each tensor (the last one: trailer dropped)


def test_random_corruption_raises_only_our_errors(tmp_path: Path, sample_file) -> None:
    data, specs = sample_file
    rng = np.random.default_rng(8)
    path = tmp_path / "bad.ckpt"
    for _ in range(400):
        damaged = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            damaged[int(rng.integers(0, len(damaged)))] = int(rng.integers(0, 256))
        path.write_bytes(damaged)
        check_damaged(path, specs)
        if damaged != data:  # with the CRC checked, no damage goes unnoticed
            with pytest.raises(MpitransError):
                index_checkpoint(path, verify_crc=True)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_fuzz_mutated_files(tmp_path: Path, sample_file, edits: list[tuple[int, int]],
                            cut: int | None) -> None:
    data, specs = sample_file
    damaged = bytearray(data)
    for pos, value in edits:
        damaged[pos % len(damaged)] = value
    if cut is not None:
        damaged = damaged[: cut % (len(damaged) + 1)]
    path = tmp_path / "fuzz.ckpt"
    path.write_bytes(damaged)
    check_damaged(path, specs)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "junk.ckpt"
    path.write_bytes(data)
    check_damaged(path, [])


shapes = st.lists(st.integers(0, 5), max_size=4).map(tuple)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensors=st.lists(st.tuples(st.sampled_from(DTYPES), shapes), min_size=1, max_size=5),
       record_bytes=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_fuzz_round_trip(tmp_path: Path, tensors: list, record_bytes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    specs = [(f"t{i}", d, s, random_raw(rng, d, s)) for i, (d, s) in enumerate(tensors)]
    path = tmp_path / "rt.ckpt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ckpt.format, "RECORD_BYTES", record_bytes)
        our_save(path, specs)
    if all(prod(s[2]) == 0 for s in specs):
        with pytest.raises(CheckpointFormatError, match="empty"):
            index_checkpoint(path)
        return
    idx = assert_index_matches(path, specs)
    for name, dtype, shape, raw in specs:
        if prod(shape):
            box = random_box(rng, shape)
            want = opaque(raw, dtype, shape)[tuple(slice(a, b) for a, b in box)].tobytes()
            assert bytes(read_box(path, idx[name], box)) == want


# ---------------------------------------------------------------------------------------------- writer


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writer_publishes_only_on_success(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), CheckpointWriter(tmp_path / "x.ckpt") as w:
        w.write_tensor("a", "Int8", (2,), b"\x01\x02")
        assert leftovers(tmp_path) == [f".x.ckpt.tmp-{os.getpid()}"]
        raise RuntimeError("boom")
    assert leftovers(tmp_path) == []

    with pytest.raises(ValueError, match="only 1 of 2 bytes"), CheckpointWriter(tmp_path / "x.ckpt") as w:
        w.begin_tensor("a", "Int8", (2,))
        w.write(b"\x01")
    assert leftovers(tmp_path) == []

    w = CheckpointWriter(tmp_path / "x.ckpt")
    w.begin_tensor("a", "Int8", (2,))
    w.write(b"\x01")
    with pytest.raises(ValueError):
        w.close()
    assert leftovers(tmp_path) == []

    (tmp_path / "x.ckpt").write_bytes(b"old")
    with CheckpointWriter(tmp_path / "x.ckpt") as w:
        w.write_tensor("a", "Int8", (2,), b"\x01\x02")
    assert leftovers(tmp_path) == ["x.ckpt"]
    assert index_checkpoint(tmp_path / "x.ckpt").names() == ["a"]
    w.abort()  # after publishing, abort must not touch anything
    with pytest.raises(ValueError, match="closed"):
        w.begin_tensor("b", "Int8", (1,))
    assert leftovers(tmp_path) == ["x.ckpt"]


def test_writer_refuses_misuse(tmp_path: Path) -> None:
    with CheckpointWriter(tmp_path / "x.ckpt") as w:
        with pytest.raises(ValueError, match="without begin_tensor"):
            w.write(b"\x00")
        w.begin_tensor("a", "Int16", (2,))
        with pytest.raises(ValueError, match="only 4 of its 4 remain"):
            w.write(b"\x00" * 5)
        w.write(np.array([1, 2], np.int16))
        with pytest.raises(ValueError, match="twice"):
            w.begin_tensor("a", "Int16", (2,))
        with pytest.raises(UnsupportedError):
            w.begin_tensor("s", "str", (0,))
        with pytest.raises(ValueError, match="C-contiguous"):
            w.write_tensor("t", "Int32", (2, 2), np.arange(8, dtype=np.int32).reshape(2, 4)[:, :2])
    assert index_checkpoint(tmp_path / "x.ckpt").names() == ["a"]


def test_writer_with_no_tensors_makes_an_empty_file(tmp_path: Path) -> None:
    with CheckpointWriter(tmp_path / "e.ckpt"):
        pass
    assert (tmp_path / "e.ckpt").read_bytes() == b""


def test_package_never_imports_mindspore() -> None:
    code = ("import sys, mpitrans.storage.ckpt, mpitrans.storage.wire; "
            "sys.exit(any(m == 'mindspore' or m.startswith('mindspore.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    for source in Path(ckpt.__file__).parent.glob("*.py"):
        assert "import mindspore" not in source.read_text() and "from mindspore" not in source.read_text()


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


# ---------------------------------------------------------------------------------------------- fast path


@pytest.mark.parametrize("record_bytes", [7, 64, 1 << 20])
def test_fast_header_path_indexes_exactly_like_the_careful_parser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 record_bytes: int) -> None:
    """MindSpore-layout records take a fast path; it must give the same index as field-by-field parsing,
    for every dtype, scalars, long names, big dims (multi-byte varints) and multi-record tensors."""
    from mpitrans.storage.ckpt import index as ckpt_index

    rng = np.random.default_rng(record_bytes)
    monkeypatch.setattr(ckpt.format, "RECORD_BYTES", record_bytes)
    specs = [(f"{'n' * (i * 37 % 300)}.p{i}", d, s, random_raw(rng, d, s)) for i, (d, s) in enumerate([
        ("Float32", ()), ("BFloat16", (3, 200)), ("Int64", (1,)), ("UInt8", (130,)), ("Bool", (2, 1, 3)),
        ("Float16", (129, 2)), ("Int32", (0, 4)), ("Float64", (5,)),
    ])]
    our_save(tmp_path / "f.ckpt", specs)
    fast = ckpt.index_checkpoint(tmp_path / "f.ckpt")
    calls = []
    real = ckpt_index._Scanner._fast
    monkeypatch.setattr(ckpt_index._Scanner, "_fast", lambda self, at, end: calls.append(at) or real(self, at, end))
    ckpt.index_checkpoint(tmp_path / "f.ckpt")
    assert calls, "the fast path was not taken"
    monkeypatch.setattr(ckpt_index._Scanner, "_fast", lambda self, at, end: None)
    careful = ckpt.index_checkpoint(tmp_path / "f.ckpt")
    assert fast.entries == careful.entries and fast.crc == careful.crc
