"""MindSpore's encrypted `.ckpt` files (``save_checkpoint(enc_key=, enc_mode=)``), read and written by streaming.

MindSpore encrypts the serialized checkpoint in blocks of at most ``PLAIN_BLOCK`` (64 MiB) plaintext bytes,
each block encrypted alone with a fresh random IV and stored as (all integers int32, little-endian)::

    AES-GCM:          magic | tag (16) | n | iv_len (16) | iv (16 stored, the first 12 used) | len | ciphertext
    AES-CBC, SM4-CBC: magic |            n | iv_len (16) | iv (16)                          | len | ciphertext

where ``n`` counts the bytes after it and CBC ciphertext carries PKCS#7 padding. There is no associated
data. This layout was learnt from files the installed MindSpore writes, and the tests check it both ways.

An encrypted file cannot be read by byte range, so a reader decrypts it once, streaming, into a private
plaintext file (`Scratch`) and reads that; an encrypted target is written in plaintext to the scratch
folder first and encrypted, streaming, to its final name. Memory stays bounded by `PIECE` whatever the
block size. Keys are only ever held in memory: they never reach a message, a log or a summary.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import struct
import tempfile
import threading
from dataclasses import dataclass, field
from typing import BinaryIO

from mpitrans.errors import CheckpointFormatError, MpitransError
from mpitrans.storage import checksum
from mpitrans.storage.base import AtomicFile

MODES = ("AES-GCM", "AES-CBC", "SM4-CBC")
MAGIC = {"AES-GCM": b"\xd8\x5e\x3a\x7f", "AES-CBC": b"\xd9\x5e\x3a\x7f", "SM4-CBC": b"\xda\x5e\x3a\x7f"}
MODE_OF_MAGIC = {v: k for k, v in MAGIC.items()}
PLAIN_BLOCK = 64 * 1024 * 1024  # MindSpore's ENCRYPT_BLOCK_SIZE KiB
PIECE = 4 * 1024 * 1024  # bytes decrypted or encrypted per step
IV_BYTES = 16
GCM_NONCE = 12  # MindSpore stores 16 IV bytes but OpenSSL's GCM uses the default 12
TAG_BYTES = 16
KEY_SIZES = {"AES-GCM": (16, 24, 32), "AES-CBC": (16, 24, 32), "SM4-CBC": (16,)}
ENV_PREFIX = "env:"
SCRATCH_PREFIX = ".mpitrans-plain-"  # then host, pid: a later job can tell a dead process's folder
_INT = struct.Struct("<i")


class DecryptError(CheckpointFormatError):
    """Wrong key, wrong mode, or a damaged encrypted file."""


def check_mode(mode: str, option: str) -> str:
    if mode not in MODES:
        raise MpitransError(f"{option} {mode!r} is not one of {', '.join(MODES)}")
    return mode


def load_key(source: str, mode: str, option: str) -> bytes:
    """The key named by `source`: a file holding the raw key bytes (what MindSpore's ``enc_key=`` gets), or
    ``env:NAME``, an environment variable holding the key in hex. Messages name the source, never the key."""
    check_mode(mode, option.replace("key-file", "mode"))
    if source.startswith(ENV_PREFIX):
        var = source[len(ENV_PREFIX):]
        text = os.environ.get(var)
        if text is None:
            raise MpitransError(f"{option} {source}: environment variable {var} is not set in this process "
                                f"(under mpirun pass it with -x {var})")
        try:
            key = bytes.fromhex(text.strip())
        except ValueError:
            raise MpitransError(f"{option} {source}: {var} must hold the key in hex digits") from None
    else:
        try:
            with open(source, "rb") as f:
                key = f.read(65)
        except OSError as exc:
            raise MpitransError(f"{option} {source}: cannot read the key file: {exc.strerror}") from None
    if len(key) not in KEY_SIZES[mode]:
        sizes = "/".join(str(n) for n in KEY_SIZES[mode])
        hint = " (a trailing newline counts: write the file with printf, not echo)" if len(key) - 1 in \
            KEY_SIZES[mode] else ""
        raise MpitransError(f"{option} {source}: a {mode} key has {sizes} bytes, this one has {len(key)}{hint}")
    return key


def cipher_mode(path: str) -> str | None:
    """The mode a file was encrypted with, from its first four bytes; None for a plain file."""
    try:
        with open(path, "rb") as f:
            return MODE_OF_MAGIC.get(f.read(4))
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: cannot open checkpoint: {exc.strerror}") from None


def _algorithm(mode: str, key: bytes):  # noqa: ANN202 - a cryptography algorithm object
    from cryptography.hazmat.primitives.ciphers import algorithms

    return algorithms.SM4(key) if mode == "SM4-CBC" else algorithms.AES(key)


# -- reading ---------------------------------------------------------------------------------------------


def _read_exact(f: BinaryIO, n: int, path: str, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise DecryptError(f"{path}: encrypted file ends inside {what} (truncated?)")
    return data


def _block_header(f: BinaryIO, path: str, mode: str) -> tuple[bytes, bytes, int] | None:
    """(iv, tag, ciphertext length) of the next block, or None at the end of the file."""
    magic = f.read(4)
    if not magic:
        return None
    if magic != MAGIC[mode]:
        found = MODE_OF_MAGIC.get(magic)
        if found is not None:
            raise DecryptError(f"{path}: encrypted with {found}, not with --dec-mode {mode}")
        raise DecryptError(f"{path}: not a MindSpore encrypted checkpoint block at byte {f.tell() - 4}")
    tag = _read_exact(f, TAG_BYTES, path, "a block tag") if mode == "AES-GCM" else b""
    size = _INT.unpack(_read_exact(f, 4, path, "a block header"))[0]
    iv_len = _INT.unpack(_read_exact(f, 4, path, "a block header"))[0]
    if iv_len != IV_BYTES:
        raise DecryptError(f"{path}: encrypted block with an IV of {iv_len} bytes (expected {IV_BYTES})")
    iv = _read_exact(f, IV_BYTES, path, "a block IV")
    length = _INT.unpack(_read_exact(f, 4, path, "a block header"))[0]
    if length < 0 or size != 8 + IV_BYTES + length:
        raise DecryptError(f"{path}: damaged encrypted block header at byte {f.tell() - 4}")
    return iv, tag, length


def _block_decryptor(mode: str, key: bytes, iv: bytes, tag: bytes):  # noqa: ANN202
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    if mode == "AES-GCM":
        return Cipher(_algorithm(mode, key), modes.GCM(iv[:GCM_NONCE], tag)).decryptor()
    return Cipher(_algorithm(mode, key), modes.CBC(iv)).decryptor()


def _decrypt_block(f: BinaryIO, out: BinaryIO, header: tuple[bytes, bytes, int], mode: str, key: bytes) -> None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import padding

    iv, tag, left = header
    dec = _block_decryptor(mode, key, iv, tag)
    unpad = padding.PKCS7(128).unpadder() if mode != "AES-GCM" else None
    path = getattr(f, "name", "?")
    while left:
        data = _read_exact(f, min(PIECE, left), path, "a block")
        left -= len(data)
        plain = dec.update(data)
        out.write(unpad.update(plain) if unpad is not None else plain)
    try:
        tail = dec.finalize()
        out.write(unpad.update(tail) + unpad.finalize() if unpad is not None else tail)
    except (InvalidTag, ValueError):
        raise DecryptError(f"{path}: cannot decrypt with the given key and --dec-mode {mode} (wrong key, or "
                           f"a damaged file)") from None


def decrypt_file(src: str, out: BinaryIO, key: bytes, mode: str) -> int:
    """Decrypt MindSpore's block stream `src` into `out`; returns the plaintext size. Raises `DecryptError`
    naming `src` (never the key) on a wrong key, a wrong mode or a damaged file."""
    with open(src, "rb") as f:
        blocks = 0
        while (header := _block_header(f, src, mode)) is not None:
            _decrypt_block(f, out, header, mode, key)
            blocks += 1
        if not blocks:
            raise DecryptError(f"{src}: encrypted file holds no block")
    return out.tell()


# -- writing ---------------------------------------------------------------------------------------------


def _cipher_length(mode: str, n: int) -> int:
    return n if mode == "AES-GCM" else (n // 16 + 1) * 16


def _encrypt_block(src: BinaryIO, out: BinaryIO, n: int, mode: str, key: bytes) -> None:
    """Encrypt the next `n` plaintext bytes of `src` as one block; the GCM tag, known last, is written into
    its place before the ciphertext once the block is done."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    iv = os.urandom(IV_BYTES)
    gcm = mode == "AES-GCM"
    enc = Cipher(_algorithm(mode, key), modes.GCM(iv[:GCM_NONCE]) if gcm else modes.CBC(iv)).encryptor()
    pad = None if gcm else padding.PKCS7(128).padder()
    length = _cipher_length(mode, n)
    tag_at = out.tell() + 4
    out.write(MAGIC[mode] + (b"\0" * TAG_BYTES if gcm else b"") + _INT.pack(8 + IV_BYTES + length)
              + _INT.pack(IV_BYTES) + iv + _INT.pack(length))
    left = n
    while left:
        data = src.read(min(PIECE, left))
        if not data:
            raise MpitransError(f"{getattr(src, 'name', '?')}: plaintext shrank while being encrypted")
        left -= len(data)
        out.write(enc.update(pad.update(data) if pad is not None else data))
    out.write(enc.update(pad.finalize()) + enc.finalize() if pad is not None else enc.finalize())
    if gcm:
        end = out.tell()
        out.seek(tag_at)
        out.write(enc.tag)
        out.seek(end)


def encrypt_file(plain: str, final: str, key: bytes, mode: str) -> tuple[int, int]:
    """Encrypt the file `plain` as MindSpore does and publish it atomically as `final`: (size, CRC-32C of
    the published bytes, for the manifest)."""
    total = os.path.getsize(plain)
    out = AtomicFile(final)
    try:
        assert out.file is not None
        with open(plain, "rb") as src:
            for pos in range(0, total, PLAIN_BLOCK):
                _encrypt_block(src, out.file, min(PLAIN_BLOCK, total - pos), mode, key)
        out.file.flush()
        size = out.file.tell()
        out.commit()
    except BaseException:
        out.abort()
        raise
    return size, checksum.file_crc32c(final)[1]


# -- scratch space ---------------------------------------------------------------------------------------


@dataclass
class Scratch:
    """A private folder (mode 0700) for plaintext copies, created on first use under `base`, removed by
    `cleanup` (also at interpreter exit, so an error path cannot leave plaintext behind)."""

    base: str
    folder: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _count: int = 0

    def new_path(self, hint: str) -> str:
        with self._lock:
            if self.folder is None:
                os.makedirs(self.base, exist_ok=True)
                self.folder = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{socket.gethostname()}-{os.getpid()}-",
                                               dir=self.base)
                atexit.register(self.cleanup)
            self._count += 1
            return os.path.join(self.folder, f"{self._count}-{os.path.basename(hint)}")

    def cleanup(self) -> None:
        with self._lock:
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                self.folder = None


def remove_stale_scratch(base: str) -> None:
    """Scratch folders under `base` of processes of this host that no longer run (killed by a signal or an
    MPI abort, which skip every cleanup); another host's folders are left to that host."""
    prefix = f"{SCRATCH_PREFIX}{socket.gethostname()}-"
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def private_file(path: str) -> BinaryIO:
    """A new file only this user may read (plaintext of an encrypted checkpoint)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb", buffering=1 << 20)


def decrypt_to_scratch(src: str, scratch: Scratch, key: bytes, mode: str) -> str:
    """`src` decrypted into a new private file of `scratch`; nothing is left there when it fails."""
    plain = scratch.new_path(src)
    try:
        with private_file(plain) as out:
            decrypt_file(src, out, key, mode)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(plain)
        raise
    return plain


# -- what a job asks of its .ckpt files ------------------------------------------------------------------


@dataclass
class CkptReading:
    """How a job reads `.ckpt` sources: whether the process that indexes a file checks its CRC trailer,
    and the key (never shown: ``repr=False``) that opens encrypted ones, each decrypted once per process."""

    crc_check: bool = False
    key: bytes | None = field(default=None, repr=False)
    mode: str = "AES-GCM"
    scratch: Scratch | None = None
    _plain: dict[str, str] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def plain_path(self, path: str) -> str:
        """`path` itself for a plain file, else its decrypted private copy (made on first use)."""
        with self._lock:
            if path in self._plain:
                return self._plain[path]
            found = cipher_mode(path)
            if found is None:
                self._plain[path] = path
                return path
            if self.key is None or self.scratch is None:
                raise CheckpointFormatError(f"{path}: the file looks encrypted ({found}, saved with MindSpore's "
                                            f"enc_key); pass --dec-key-file and --dec-mode {found}")
            self._plain[path] = decrypt_to_scratch(path, self.scratch, self.key, self.mode)
            return self._plain[path]


@dataclass
class CkptWriting:
    """How a job writes `.ckpt` targets: with MindSpore's CRC trailer, or encrypted (never both: MindSpore
    cannot check the CRC of an encrypted file)."""

    crc_check: bool = False
    key: bytes | None = field(default=None, repr=False)
    mode: str = "AES-GCM"
    scratch: Scratch | None = None

    @property
    def encrypted(self) -> bool:
        return self.key is not None
