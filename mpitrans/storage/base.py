"""What the job layer asks of a file format, and the one way every file is published.

A format plugs in with two classes, in the spirit of torch.distributed.checkpoint's StorageReader and
StorageWriter:

* a `SourceReader` opens one source file, lists its tensors (format-neutral `TensorMeta`, in file
  order) and copies any box of any tensor into a caller's buffer, reading only the bytes it covers;
* a `TargetWriter` is opened with the whole list of tensors one target file will hold (so formats whose
  header comes first can write it first), then receives the target's bytes as one stream, tensor after
  tensor in C order, in pieces of any size; `commit` publishes the file, `abort` drops it.

Every file mpitrans writes (targets, manifests, progress records, strategies) goes through `AtomicFile`:
a hidden temporary name beside the final one, fsync, rename, directory fsync. A reader therefore sees a
complete file or none, and a crash leaves only `.NAME.tmp-PID` files, which the next run removes.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Callable, Sequence
from typing import BinaryIO, NamedTuple, Protocol

from mpitrans.metadata import TensorMeta

Box = tuple[tuple[int, int], ...]

_RUNS: dict[tuple, tuple[int, int] | None] = {}  # (box, shape) -> `contiguous_run`'s answer


def contiguous_run(box: Sequence[tuple[int, int]], shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(element offset, element count) when `box` is one C-contiguous run of an array of `shape`, else None
    (also for a box outside the array): after the leading dims it takes one index of, at most one dim is
    partial and every later one is whole. Tensors of one layout class ask about the same few (box, shape)
    pairs thousands of times in a metadata-heavy job, so each answer is kept."""
    try:
        return _RUNS[(box, shape)]
    except KeyError:
        pass
    except TypeError:  # a box given as lists: not kept
        return _run_of(box, shape)
    if len(_RUNS) > 1 << 16:
        _RUNS.clear()
    found = _RUNS[(box, shape)] = _run_of(box, shape)
    return found


def _run_of(box: Sequence[tuple[int, int]], shape: tuple[int, ...]) -> tuple[int, int] | None:
    if len(box) != len(shape):
        return None
    k = 0
    while k < len(shape) - 1 and box[k][1] - box[k][0] == 1:
        k += 1
    offset = 0
    count = 1
    for j, ((a, b), dim) in enumerate(zip(box, shape, strict=True)):
        if not 0 <= a <= b <= dim or (j > k and (a, b) != (0, dim)):
            return None
        offset = offset * dim + a
        count *= b - a
    return offset, count


class Published(NamedTuple):
    path: str
    size: int
    crc32c: int


class SourceReader(Protocol):
    path: str

    def tensors(self) -> list[TensorMeta]: ...

    def read_box(self, name: str, box: Box, out: memoryview) -> None: ...

    def export_index(self) -> bytes:
        """The file's index, for `open_source(path, index=...)` in another process."""
        ...

    def close(self) -> None: ...


class TargetWriter(Protocol):
    path: str

    def write(self, data: memoryview) -> None: ...

    def commit(self) -> Published: ...

    def abort(self) -> None: ...


class TargetFormat(Protocol):
    """A format's entry points, as `storage.formats` registers them."""

    name: str
    suffix: str

    def open_source(self, path: str) -> SourceReader: ...

    def open_target(self, path: str, tensors: Sequence[TensorMeta]) -> TargetWriter: ...


class TensorStream:
    """Cuts a target's byte stream at tensor boundaries, so a format's writer sees tensors, not bytes:
    `begin(t)` as each tensor of the list starts (empty ones too), `piece(data)` for its bytes."""

    def __init__(self, path: str, tensors: Sequence[TensorMeta], begin: Callable[[TensorMeta], None],
                 piece: Callable[[memoryview], None]) -> None:
        self.path = path
        self.tensors = list(tensors)
        self._begin, self._piece = begin, piece
        self._next = 0  # index of the tensor the next byte belongs to
        self._left = 0  # bytes still due for the open tensor

    def write(self, data: memoryview) -> None:
        pos = 0
        while pos < len(data):
            while self._left == 0:
                if self._next == len(self.tensors):
                    raise ValueError(f"{self.path}: {len(data) - pos} bytes more than its tensors hold")
                t = self.tensors[self._next]
                self._next += 1
                self._begin(t)
                self._left = t.nbytes
            k = min(self._left, len(data) - pos)
            self._piece(data[pos:pos + k])
            self._left -= k
            pos += k

    def missing(self) -> str | None:
        """The first tensor that did not get all its bytes (trailing empty tensors need none), or None."""
        if self._left:
            return self.tensors[self._next - 1].name
        return next((t.name for t in self.tensors[self._next:] if t.nbytes), None)


def temp_path(path: str) -> str:
    folder, base = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{base}.tmp-{os.getpid()}")


def remove_stale_temps(path: str) -> None:
    """Temporary files that killed runs left for `path` (they never became final names)."""
    folder, base = os.path.split(os.path.abspath(path))
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(base)}.tmp-*")):
        with contextlib.suppress(OSError):
            os.unlink(stale)


def fsync_dir(folder: str) -> None:
    """Make a rename durable; some filesystems refuse to open directories, which we tolerate."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PublishOnExit:
    """`with` support for writers: publish when the block ends normally, drop the file when it raises."""

    def commit(self) -> object:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):  # noqa: ANN204 - returns the subclass
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class AtomicFile(PublishOnExit):
    """A file that appears under its final name only after `commit`; on any failure, never."""

    def __init__(self, path: str | os.PathLike[str], buffering: int = 1 << 20) -> None:
        self.path = os.fspath(path)
        self.tmp = temp_path(self.path)
        self.file: BinaryIO | None = open(self.tmp, "wb", buffering=buffering)
        self.published = False

    def commit(self) -> None:
        """fsync, rename over the final name, fsync the directory."""
        if self.file is None:
            raise ValueError(f"{self.path} is already closed")
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None
            os.replace(self.tmp, self.path)
            self.published = True
        except BaseException:
            self.abort()
            raise
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def abort(self) -> None:
        """Drop the partial file; safe to call twice, and a no-op once published."""
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None
        if not self.published:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)


def write_atomically(path: str, data: bytes) -> None:
    """A small whole file (manifest, progress record, strategy) published atomically."""
    with AtomicFile(path, buffering=0) as f:
        assert f.file is not None
        f.file.write(data)
