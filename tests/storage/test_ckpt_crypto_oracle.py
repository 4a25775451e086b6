"""Encrypted `.ckpt` files against MindSpore: what it encrypts we decrypt to the bytes it would have written in
plain, what we encrypt it loads; wrong keys and modes fail naming the file, never the key."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from mpitrans.errors import CheckpointFormatError, MpitransError
from mpitrans.metadata import TensorMeta
from mpitrans.storage.ckpt import crypto
from mpitrans.storage.ckpt.crypto import CkptReading, CkptWriting, DecryptError, Scratch, load_key
from mpitrans.storage.ckpt.format import TO_NEUTRAL
from mpitrans.storage.ckpt.source import CkptSource
from mpitrans.storage.ckpt.writer import CkptTarget
from tests.storage.samples import DTYPES, full_box, random_raw
from tests.storage.test_ckpt_oracle import ms, ms_save, serialization

KEYS = [("AES-GCM", 16), ("AES-GCM", 32), ("AES-CBC", 16), ("AES-CBC", 24), ("SM4-CBC", 16)]


def specs_for(seed: int, count: int = 4) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        dtype = DTYPES[int(rng.integers(len(DTYPES)))]
        shape = tuple(int(d) for d in rng.integers(1, 40, int(rng.integers(1, 3))))
        out.append((f"layer{i}.w", dtype, shape, random_raw(rng, dtype, shape)))
    big = (int(rng.integers(30, 60)), 37)  # several encryption blocks of 1 KiB (see small_blocks)
    out.append(("big.w", "Float32", big, random_raw(rng, "Float32", big)))
    return out


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Encrypt in 1 KiB blocks on both sides, so small files span many blocks."""
    monkeypatch.setattr(serialization, "ENCRYPT_BLOCK_SIZE", 1)
    monkeypatch.setattr(crypto, "PLAIN_BLOCK", 1024)
    monkeypatch.setattr(crypto, "PIECE", 300)  # and decrypt in pieces that do not align with blocks


@pytest.mark.parametrize(("mode", "key_len"), KEYS)
def test_mindspore_encrypted_file_decrypts_to_its_plain_bytes(tmp_path: Path, small_blocks, mode, key_len) -> None:
    key = os.urandom(key_len)
    specs = specs_for(key_len + len(mode))
    plain = ms_save(tmp_path / "plain.ckpt", specs)
    ms_save(tmp_path / "enc.ckpt", specs, enc_key=key, enc_mode=mode)
    assert crypto.cipher_mode(str(tmp_path / "enc.ckpt")) == mode
    out = io.BytesIO()
    assert crypto.decrypt_file(str(tmp_path / "enc.ckpt"), out, key, mode) == len(plain)
    assert out.getvalue() == plain
    assert len(plain) > 2 * 1024, "the file spans several blocks"


@pytest.mark.parametrize(("mode", "key_len"), KEYS)
def test_our_encrypted_file_loads_in_mindspore(tmp_path: Path, small_blocks, mode, key_len) -> None:
    key = os.urandom(key_len)
    specs = specs_for(7 * key_len + len(mode))
    ms_save(tmp_path / "plain.ckpt", specs)
    size, crc = crypto.encrypt_file(str(tmp_path / "plain.ckpt"), str(tmp_path / "ours.ckpt"), key, mode)
    assert size == (tmp_path / "ours.ckpt").stat().st_size
    want = ms.load_checkpoint(str(tmp_path / "plain.ckpt"))
    got = ms.load_checkpoint(str(tmp_path / "ours.ckpt"), dec_key=key, dec_mode=mode)
    assert list(got) == list(want)
    for name in want:
        assert got[name].get_bytes() == want[name].get_bytes(), name
    out = io.BytesIO()
    crypto.decrypt_file(str(tmp_path / "ours.ckpt"), out, key, mode)
    assert out.getvalue() == (tmp_path / "plain.ckpt").read_bytes()


def test_wrong_key_or_mode_names_the_file_not_the_key(tmp_path: Path) -> None:
    key = b"K" * 16
    ms_save(tmp_path / "enc.ckpt", specs_for(1), enc_key=key, enc_mode="AES-GCM")
    ms_save(tmp_path / "cbc.ckpt", specs_for(1), enc_key=key, enc_mode="AES-CBC")
    wrong = b"W" * 16
    for path, k, mode, words in [("enc.ckpt", wrong, "AES-GCM", "wrong key"), ("cbc.ckpt", wrong, "AES-CBC", "key"),
                                 ("enc.ckpt", key, "AES-CBC", "encrypted with AES-GCM")]:
        with pytest.raises(DecryptError) as err:
            crypto.decrypt_file(str(tmp_path / path), io.BytesIO(), k, mode)
        assert path in str(err.value) and words in str(err.value)
        assert k.decode() not in str(err.value) and k.hex() not in str(err.value)


def test_truncated_encrypted_file_fails(tmp_path: Path) -> None:
    key = os.urandom(16)
    data = ms_save(tmp_path / "enc.ckpt", specs_for(2), enc_key=key)
    (tmp_path / "enc.ckpt").write_bytes(data[:-5])
    with pytest.raises(DecryptError, match=r"enc\.ckpt.*truncated"):
        crypto.decrypt_file(str(tmp_path / "enc.ckpt"), io.BytesIO(), key, "AES-GCM")


def test_keys_from_a_file_or_a_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(24)
    (tmp_path / "k").write_bytes(key)
    assert load_key(str(tmp_path / "k"), "AES-CBC", "--dec-key-file") == key
    monkeypatch.setenv("MY_KEY", key.hex())
    assert load_key("env:MY_KEY", "AES-GCM", "--dec-key-file") == key
    (tmp_path / "nl").write_bytes(b"0123456789abcdef\n")
    with pytest.raises(MpitransError, match="trailing newline") as err:
        load_key(str(tmp_path / "nl"), "AES-GCM", "--dec-key-file")
    assert "0123456789abcdef" not in str(err.value)
    with pytest.raises(MpitransError, match="16 bytes, this one has 24"):
        load_key(str(tmp_path / "k"), "SM4-CBC", "--enc-key-file")
    with pytest.raises(MpitransError, match="NOT_SET is not set"):
        load_key("env:NOT_SET", "AES-GCM", "--dec-key-file")
    monkeypatch.setenv("MY_KEY", "zz" * 16)
    with pytest.raises(MpitransError, match="hex") as err:
        load_key("env:MY_KEY", "AES-GCM", "--dec-key-file")
    assert "zz" * 16 not in str(err.value)
    with pytest.raises(MpitransError, match="--dec-mode 'AES-ECB'"):
        load_key(str(tmp_path / "k"), "AES-ECB", "--dec-key-file")


def test_source_reads_an_encrypted_file_through_a_private_copy(tmp_path: Path) -> None:
    key = os.urandom(32)
    specs = specs_for(3)
    ms_save(tmp_path / "enc.ckpt", specs, enc_key=key, enc_mode="AES-CBC")
    with pytest.raises(CheckpointFormatError, match=r"enc\.ckpt.*looks encrypted \(AES-CBC.*--dec-key-file"):
        CkptSource(str(tmp_path / "enc.ckpt"))
    scratch = Scratch(str(tmp_path / "work"))
    reading = CkptReading(False, key, "AES-CBC", scratch)
    src = CkptSource(str(tmp_path / "enc.ckpt"), reading=reading)
    assert src.index.path == str(tmp_path / "enc.ckpt")
    assert src.tensors() == [TensorMeta(n, TO_NEUTRAL[d], s) for n, d, s, _ in specs]
    peer = CkptSource(str(tmp_path / "enc.ckpt"), src.export_index(), reading)  # a reader handed the index
    for name, _d, shape, raw in specs:
        out = bytearray(len(raw))
        peer.read_box(name, full_box(shape), memoryview(out))
        assert bytes(out) == raw
    assert scratch.folder is not None and oct(os.stat(scratch.folder).st_mode & 0o777) == "0o700"
    assert len(os.listdir(scratch.folder)) == 1, "decrypted once per process"
    peer.close()
    src.close()
    scratch.cleanup()
    assert os.listdir(tmp_path / "work") == []
    assert key.hex() not in repr(reading) and str(key) not in repr(reading)


def test_encrypted_target_publishes_only_the_ciphertext(tmp_path: Path) -> None:
    key = os.urandom(16)
    specs = specs_for(4)
    scratch = Scratch(str(tmp_path / "work"))
    metas = [TensorMeta(n, TO_NEUTRAL[d], s) for n, d, s, _ in specs]
    target = CkptTarget(str(tmp_path / "t.ckpt"), metas, CkptWriting(False, key, "SM4-CBC", scratch))
    for _n, _d, _s, raw in specs:
        target.write(memoryview(raw))
    done = target.commit()
    assert os.listdir(scratch.folder) == []  # the plaintext is gone
    got = ms.load_checkpoint(str(tmp_path / "t.ckpt"), dec_key=key, dec_mode="SM4-CBC")
    for name, _d, _s, raw in specs:
        assert got[name].get_bytes() == raw
    assert done.size == (tmp_path / "t.ckpt").stat().st_size
    # An aborted target leaves neither plaintext nor a final file.
    target = CkptTarget(str(tmp_path / "u.ckpt"), metas, CkptWriting(False, key, "SM4-CBC", scratch))
    target.write(memoryview(specs[0][3]))
    target.abort()
    assert not (tmp_path / "u.ckpt").exists() and os.listdir(scratch.folder) == []
    scratch.cleanup()


def test_crc_checked_only_when_asked(tmp_path: Path) -> None:
    specs = specs_for(5)
    data = bytearray(ms_save(tmp_path / "c.ckpt", specs, crc_check=True))
    data[len(data) // 2] ^= 0x01
    (tmp_path / "c.ckpt").write_bytes(bytes(data))
    CkptSource(str(tmp_path / "c.ckpt"))  # MindSpore's load_checkpoint without crc_check does not look either
    with pytest.raises(CheckpointFormatError, match=r"c\.ckpt: CRC mismatch"):
        CkptSource(str(tmp_path / "c.ckpt"), reading=CkptReading(crc_check=True))
    with pytest.raises(ValueError, match="c.ckpt"):  # MindSpore refuses it too (its message hides why)
        ms.load_checkpoint(str(tmp_path / "c.ckpt"), crc_check=True)


def test_stale_scratch_of_dead_processes_is_removed(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    live = Scratch(str(tmp_path))
    live.new_path("x.ckpt")
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
    dead = tmp_path / f"{crypto.SCRATCH_PREFIX}{socket.gethostname()}-{dead_pid}-abc"
    other_host = tmp_path / f"{crypto.SCRATCH_PREFIX}elsewhere-{dead_pid}-abc"
    for d in (dead, other_host):
        d.mkdir()
        (d / "1-plain.ckpt").write_bytes(b"secret")
    crypto.remove_stale_scratch(str(tmp_path))
    assert not dead.exists() and other_host.exists() and live.folder and os.path.isdir(live.folder)
    live.cleanup()
