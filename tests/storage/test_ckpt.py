"""The .ckpt codec on its own: box reads over any record layout, damaged files, the writer's publishing.

Tensors are random raw bytes; numpy views use a same-itemsize unsigned type to stay opaque. Agreement with
MindSpore's own files, bytes out and tensors in, is in `test_ckpt_oracle.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from math import prod
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpitrans.errors import CheckpointFormatError, MpitransError, UnsupportedError
from mpitrans.storage import ckpt
from mpitrans.storage.ckpt import CheckpointWriter, index_checkpoint, read_box, read_box_into
from tests.storage.samples import (
    DTYPES,
    Spec,
    assert_index_matches,
    full_box,
    opaque,
    our_save,
    random_box,
    random_raw,
)

# ---------------------------------------------------------------------------------------------- records


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


# ---------------------------------------------------------------------------------------------- refusals


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
