"""Encrypted and CRC-checked checkpoints through whole jobs under mpirun, against MindSpore.

Sources are the example model's shards as MindSpore wrote them, re-saved by MindSpore encrypted (or with a CRC);
the expected targets are what `mindspore.transform_checkpoints` made of the plain originals.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from mpitrans.storage.ckpt import crypto
from tests.support.mpirun import mpirun

ms = pytest.importorskip("mindspore")

KEY_LEN = {"AES-GCM": 32, "AES-CBC": 24, "SM4-CBC": 16}


def _resave(src: Path, **kwargs: object) -> Path:
    """Every rank file of `src` loaded and saved again by MindSpore with `kwargs` (enc_key, crc_check)."""
    for path in sorted(src.glob("rank_*/*.ckpt")):
        params = ms.load_checkpoint(str(path))
        path.unlink()
        ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(path), **kwargs)
    return src


def _args(example: Path, src: Path, dst: Path, *extra: str) -> list[str]:
    return ["--src-checkpoint", str(src), "--src-strategy", str(example / "src_strategy.ckpt"),
            "--dst-checkpoint", str(dst), "--dst-strategy", str(example / "dst_strategy.ckpt"), *extra]


def _expected(example: Path) -> dict[str, bytes]:
    root = example / "expected"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.ckpt"))}


def _outputs(dst: Path) -> dict[str, Path]:
    """Target files, and a check that no hidden file or folder (plaintext copy, temp file) was left."""
    hidden = [p for p in dst.rglob(".*")]
    assert not hidden, f"left behind: {hidden}"
    return {str(p.relative_to(dst)): p for p in sorted(dst.rglob("*.ckpt"))}


def _no_key_in(key: bytes, *texts: str) -> None:
    for text in texts:
        for form in (key.hex(), key.hex().upper(), key.decode("latin-1"), repr(key)):
            assert form not in text


@pytest.mark.parametrize(("mode", "nprocs"), [("AES-GCM", 1), ("AES-GCM", 2), ("AES-CBC", 2), ("SM4-CBC", 1)])
def test_encrypted_sources_reshard_like_mindspore(example: Path, tmp_path: Path, mode: str, nprocs: int) -> None:
    key = os.urandom(KEY_LEN[mode])
    src = tmp_path / "src"
    shutil.copytree(example / "src", src)
    _resave(src, enc_key=key, enc_mode=mode)
    dst = tmp_path / "dst"
    env = {}
    if nprocs == 1:
        env["MY_CKPT_KEY"] = key.hex()
        source = "env:MY_CKPT_KEY"
    else:
        (tmp_path / "key.bin").write_bytes(key)
        source = str(tmp_path / "key.bin")
    summary = tmp_path / "summary.json"
    proc = mpirun(nprocs, _args(example, src, dst, "--dec-key-file", source, "--dec-mode", mode, "--log-level",
                                "DEBUG", "--json-summary", str(summary)), env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = _outputs(dst)
    want = _expected(example)
    assert sorted(got) == sorted(want)
    for rel, data in want.items():
        assert got[rel].read_bytes() == data, rel
    _no_key_in(key, proc.stdout, proc.stderr, summary.read_text(), (dst / "mpitrans_manifest.json").read_text())


@pytest.mark.parametrize(("mode", "nprocs"), [("AES-GCM", 2), ("SM4-CBC", 1)])  # AES-CBC: tests/storage
def test_encrypted_targets_load_in_mindspore(example: Path, tmp_path: Path, mode: str, nprocs: int) -> None:
    key = os.urandom(KEY_LEN[mode])
    (tmp_path / "key.bin").write_bytes(key)
    dst = tmp_path / "dst"
    proc = mpirun(nprocs, _args(example, example / "src", dst, "--enc-key-file", str(tmp_path / "key.bin"),
                                "--enc-mode", mode, "--quiet"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = _outputs(dst)
    for rel, data in _expected(example).items():
        assert crypto.cipher_mode(str(got[rel])) == mode
        plain = io.BytesIO()
        crypto.decrypt_file(str(got[rel]), plain, key, mode)
        assert plain.getvalue() == data, rel  # MindSpore's plain bytes, encrypted
        loaded = ms.load_checkpoint(str(got[rel]), dec_key=key, dec_mode=mode)
        want = ms.load_checkpoint(str(example / "expected" / rel))
        assert list(loaded) == list(want)
        assert all(loaded[n].get_bytes() == want[n].get_bytes() for n in want)


def test_wrong_key_or_mode_fails_cleanly(example: Path, tmp_path: Path) -> None:
    key = os.urandom(16)
    src = tmp_path / "src"
    shutil.copytree(example / "src", src)
    _resave(src, enc_key=key, enc_mode="AES-GCM")
    wrong = os.urandom(16)
    (tmp_path / "wrong.bin").write_bytes(wrong)
    (tmp_path / "key.bin").write_bytes(key)
    for key_file, mode, words in [("wrong.bin", "AES-GCM", "wrong key"),
                                  ("key.bin", "SM4-CBC", "encrypted with AES-GCM, not with --dec-mode SM4-CBC")]:
        dst = tmp_path / f"dst-{mode}"
        proc = mpirun(2, _args(example, src, dst, "--dec-key-file", str(tmp_path / key_file), "--dec-mode", mode,
                               "--quiet"), timeout=120)
        assert proc.returncode != 0
        assert words in proc.stderr and "rank_" in proc.stderr, proc.stderr
        assert proc.stderr.count("mpitrans: error") == 1
        assert not [p for p in dst.rglob("*") if p.is_file() and p.suffix == ".ckpt"], "nothing written"
        assert not list(dst.rglob(".mpitrans-plain-*")), "no plaintext left"
        _no_key_in(key, proc.stdout, proc.stderr)
        _no_key_in(wrong, proc.stdout, proc.stderr)


def test_crc_checked_and_written(example: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(example / "src", src)
    _resave(src, crc_check=True)
    dst = tmp_path / "dst"
    proc = mpirun(2, _args(example, src, dst, "--crc-check", "--quiet"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = _outputs(dst)
    for rel, data in _expected(example).items():
        # What MindSpore writes for the same tensors with crc_check=True.
        params = ms.load_checkpoint(str(example / "expected" / rel))
        theirs = tmp_path / "theirs.ckpt"
        ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(theirs), crc_check=True)
        assert got[rel].read_bytes() == theirs.read_bytes(), rel
        assert got[rel].read_bytes()[:-17] == data
        theirs.chmod(0o600)
        theirs.unlink()
        ms.load_checkpoint(str(got[rel]), crc_check=True)


def test_flipped_byte_fails_the_job_naming_the_file(example: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(example / "src", src)
    _resave(src, crc_check=True)
    victim = next((src / "rank_1").glob("*.ckpt"))
    data = bytearray(victim.read_bytes())
    data[len(data) - 40] ^= 0x04  # inside the last tensor's content: the structure stays valid
    victim.chmod(0o600)
    victim.write_bytes(bytes(data))
    dst = tmp_path / "dst"
    proc = mpirun(2, _args(example, src, dst, "--crc-check", "--quiet"), timeout=120)
    assert proc.returncode != 0
    assert str(victim) in proc.stderr and "CRC mismatch" in proc.stderr, proc.stderr
    assert not list(dst.rglob("*.ckpt"))


def test_encryption_and_crc_options_are_checked_up_front(tmp_path: Path) -> None:
    from mpitrans.errors import MpitransError
    from mpitrans.job.options import JobOptions

    with pytest.raises(MpitransError, match="--enc-key-file and --crc-check apply to ckpt targets"):
        JobOptions("src", "dst", enc_key_file="k", output_format="safetensors")
    with pytest.raises(MpitransError, match="--dec-mode 'AES-ECB' is not one of AES-GCM, AES-CBC, SM4-CBC"):
        JobOptions("src", "dst", dec_mode="AES-ECB")
    (tmp_path / "k").write_bytes(b"k" * 16)
    reading, writing = JobOptions("src", str(tmp_path), enc_key_file=str(tmp_path / "k"), crc_check=True,
                                  enc_mode="SM4-CBC").ckpt_files()
    assert reading.crc_check and reading.key is None
    assert writing.encrypted and not writing.crc_check, "MindSpore cannot check a CRC on an encrypted file"
    assert "kkkk" not in repr(writing) and "kkkk" not in repr(reading)


def test_dry_run_and_verify_read_encrypted_sources(example: Path, tmp_path: Path) -> None:
    key = os.urandom(16)
    (tmp_path / "key.bin").write_bytes(key)
    src = tmp_path / "src"
    shutil.copytree(example / "src", src)
    _resave(src, enc_key=key, enc_mode="AES-CBC")
    dst = tmp_path / "dst"
    dec = ["--dec-key-file", str(tmp_path / "key.bin"), "--dec-mode", "AES-CBC", "--quiet"]
    plan = mpirun(2, [*_args(example, src, dst, *dec), "--dry-run"], timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert not dst.exists(), "a dry run leaves the output directory alone"
    assert mpirun(2, _args(example, src, dst, *dec), timeout=120).returncode == 0
    checked = mpirun(2, ["verify", *[a for a in _args(example, src, dst, *dec) if a != "--quiet"]], timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert not list(dst.rglob(".mpitrans-plain-*"))
