"""Writing a `.ckpt` that is byte-identical to ``mindspore.save_checkpoint`` for the same tensors."""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Sequence
from math import prod
from typing import NamedTuple

import numpy as np

from mpitrans.errors import MpitransError
from mpitrans.metadata import TensorMeta
from mpitrans.storage import checksum
from mpitrans.storage.base import AtomicFile, Published, PublishOnExit, TensorStream
from mpitrans.storage.ckpt import format as fmt
from mpitrans.storage.ckpt.crypto import CkptWriting, encrypt_file
from mpitrans.storage.ckpt.format import CRC_MAGIC, WRITE_BUFFER, encode_record_header, itemsize_of


class _Open(NamedTuple):
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


class CheckpointWriter(PublishOnExit):
    """Streams tensors into a .ckpt byte-identical to ``mindspore.save_checkpoint`` for the same tensors.

    Data arrives in pieces, so a record's length prefix is computed from the shape before its bytes; the
    record cuts follow MindSpore's fixed ``RECORD_BYTES`` rule. The file appears under its final name only
    after a successful close (`AtomicFile`), so readers never see half a file. MindSpore writes nothing at
    all for a tensor with zero elements, and so do we. Type names are MindSpore's (``"BFloat16"``).
    """

    def __init__(self, path: str | os.PathLike[str], *, crc_check: bool = False, checksum: bool = False) -> None:
        self.path = os.fspath(path)
        # CRC-32C of every byte written, for the job manifest.
        self.checksum: int | None = 0 if checksum else None
        self.size = 0
        self._record_bytes = fmt.RECORD_BYTES
        self._crc: int | None = 0 if crc_check else None
        self._names: set[str] = set()
        self._open: _Open | None = None
        self._written = 0  # bytes of the open tensor received so far
        self._record_end = 0  # tensor byte position where the current record's content ends
        self._out = AtomicFile(self.path, buffering=WRITE_BUFFER)

    def begin_tensor(self, name: str, dtype: str, shape: Sequence[int]) -> None:
        """Start a tensor whose ``prod(shape) * itemsize`` bytes follow through :meth:`write`."""
        self._check_open()
        self.end_tensor()
        size = itemsize_of(dtype)
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape} of {name!r}")
        if name in self._names:
            raise ValueError(f"parameter {name!r} written twice to {self.path}")
        self._names.add(name)
        self._open = _Open(name, dtype, shape, prod(shape) * size)
        self._written = 0
        self._record_end = 0

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Append the next C-order bytes of the open tensor, emitting record headers as boundaries pass."""
        cur = self._open
        if cur is None:
            raise ValueError("write() without begin_tensor()")
        view = _byte_view(data)
        if len(view) > cur.nbytes - self._written:
            raise ValueError(f"{cur.name!r}: {len(view)} bytes given but only {cur.nbytes - self._written} "
                             f"of its {cur.nbytes} remain")
        pos = 0
        while pos < len(view):
            if self._written == self._record_end:
                size = min(self._record_bytes, cur.nbytes - self._written)
                self._emit(encode_record_header(cur.name, cur.dtype, cur.shape, size))
                self._record_end = self._written + size
            k = min(len(view) - pos, self._record_end - self._written)
            self._emit(view[pos:pos + k])
            pos += k
            self._written += k

    def end_tensor(self) -> None:
        """Close the open tensor; refusing a short one keeps a missing chunk from becoming a corrupt file."""
        cur = self._open
        if cur is not None and self._written != cur.nbytes:
            raise ValueError(f"{cur.name!r}: only {self._written} of {cur.nbytes} bytes were written")
        self._open = None

    def write_tensor(self, name: str, dtype: str, shape: Sequence[int],
                     data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """A whole tensor at once, for callers that already hold it."""
        view = _byte_view(data)  # refuse unusable data before the tensor is opened
        self.begin_tensor(name, dtype, shape)
        self.write(view)
        self.end_tensor()

    def commit(self) -> None:
        self.close()

    def close(self) -> None:
        """Finish the file and publish it under its final name; on any failure nothing is published."""
        if self._out.file is None:
            return
        try:
            self.end_tensor()
            if self._crc is not None:
                self._out.file.write(CRC_MAGIC + self._crc.to_bytes(10, "big"))
        except BaseException:
            self.abort()
            raise
        self._out.commit()

    def abort(self) -> None:
        """Drop the partial file; safe to call more than once, and a no-op once the file is published."""
        self._out.abort()

    def _check_open(self) -> None:
        if self._out.file is None:
            raise ValueError(f"writer for {self.path} is already closed")

    def _emit(self, data: bytes | memoryview) -> None:
        self._check_open()
        assert self._out.file is not None
        self._out.file.write(data)
        self.size += len(data)
        if self._crc is not None:
            self._crc = zlib.crc32(data, self._crc)
        if self.checksum is not None:
            self.checksum = checksum.crc32c(data, self.checksum)


class CkptTarget:
    """A `TargetWriter` for `.ckpt`: knows the target's tensor list, so the job streams plain bytes.

    With `writing.crc_check` the file ends with MindSpore's CRC trailer. With a key, the plaintext goes to
    a private scratch file first and is encrypted, streaming, to the final name on commit; the scratch
    file is removed either way, so neither a plaintext nor a half-encrypted target outlives a failure."""

    def __init__(self, path: str, tensors: Sequence[TensorMeta], writing: CkptWriting | None = None) -> None:
        self.path = path
        self.writing = writing or CkptWriting()
        self._plain: str | None = None
        if self.writing.encrypted:
            if self.writing.crc_check or self.writing.scratch is None:
                raise MpitransError(f"{path}: an encrypted target needs scratch space and no CRC trailer "
                                    f"(MindSpore cannot check the CRC of an encrypted file)")
            self._plain = self.writing.scratch.new_path(path)
        self._writer = CheckpointWriter(self._plain or path, crc_check=self.writing.crc_check,
                                        checksum=self._plain is None)
        self._stream = TensorStream(path, tensors, self._begin, self._writer.write)

    def _begin(self, t: TensorMeta) -> None:
        self._writer.begin_tensor(t.name, fmt.FROM_NEUTRAL[t.dtype], t.shape)

    def write(self, data: memoryview) -> None:
        self._stream.write(data)

    def commit(self) -> Published:
        """Publish only when every tensor got all its bytes: a short target is an error, never a file."""
        missing = self._stream.missing()  # trailing empty tensors: MindSpore writes nothing for them
        if missing is not None:
            self._writer.abort()
            raise MpitransError(f"{self.path}: incomplete (parameter {missing!r} and later got no bytes); "
                                f"not published")
        self._writer.close()
        if self._plain is None:
            return Published(self.path, self._writer.size, self._writer.checksum or 0)
        try:
            assert self.writing.key is not None
            size, crc = encrypt_file(self._plain, self.path, self.writing.key, self.writing.mode)
        finally:
            self._drop_plain()
        return Published(self.path, size, crc)

    def abort(self) -> None:
        self._writer.abort()
        self._drop_plain()

    def _drop_plain(self) -> None:
        if self._plain is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._plain)


def _byte_view(data: bytes | bytearray | memoryview | np.ndarray) -> memoryview:
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            raise ValueError("tensor data must be C-contiguous")
        data = data.reshape(-1).view(np.uint8)
    view = memoryview(data)
    if not view.c_contiguous:
        raise ValueError("tensor data must be C-contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


