"""The HDF5 store: one full model that plain `h5py` (or any HDF5 tool) opens, inspects and slices.

Layout of a store folder::

    model.h5       the master: one virtual dataset per parameter, mapping onto the part that holds it
    part-0.h5 ...  the parameters themselves, one chunked dataset each; each part written by one process

Element bytes are kept as they are: every dtype is stored as the HDF5 type of the same size and kind,
and bfloat16 (which HDF5 has no type for) as 2-byte unsigned integers (`<u2`) with the attribute
`mpitrans_dtype = "bfloat16"`; every dataset carries `mpitrans_dtype`, so a reader needs no guessing.
The master also carries the job's digests as file attributes and the parameters' order
(`mpitrans_order`, the order a `.ckpt` target lists them in).

A part is written as the job streams it (tensor after tensor, in pieces): each piece is a run of
elements in C order, written as at most 2·ndim hyperslabs, so memory stays bounded by the piece. As a
source, a `.h5` is read box by box (`dset[box]` straight into the caller's buffer); a virtual dataset
whose part file is missing is an error naming both files, never a tensor of fill values.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from math import prod

from mpitrans.errors import CheckpointFormatError, MpitransError
from mpitrans.metadata import TensorMeta, itemsize
from mpitrans.storage import checksum
from mpitrans.storage.base import Box, Published, TensorStream, fsync_dir, temp_path

MASTER_NAME = "model.h5"
DTYPE_ATTR = "mpitrans_dtype"
ORDER_ATTR = "mpitrans_order"
# mpitrans' neutral dtypes -> the numpy (and so HDF5) type holding the same bytes.
TO_NUMPY: dict[str, str] = {
    "bool": "|b1", "int8": "|i1", "int16": "<i2", "int32": "<i4", "int64": "<i8", "uint8": "|u1",
    "uint16": "<u2", "uint32": "<u4", "uint64": "<u8", "float16": "<f2", "bfloat16": "<u2", "float32": "<f4",
    "float64": "<f8",
}
_FROM_NUMPY = {v: k for k, v in TO_NUMPY.items() if k != "bfloat16"}


def part_name(index: int) -> str:
    """The name of the part file written as store part `index` (beside the master)."""
    return f"part-{index}.h5"


def flat_boxes(shape: Sequence[int], start: int, stop: int) -> Iterator[tuple[Box, int]]:
    """The elements [start, stop) of a C-ordered array of `shape`, as boxes in order, with their
    element counts: a partial row, whole rows, a partial row, recursively (at most 2·ndim boxes)."""
    if start >= stop:
        return
    if not shape:
        yield (), 1
        return
    inner = prod(shape[1:])
    (r0, off0), (r1, off1) = divmod(start, inner), divmod(stop, inner)
    rest = tuple((0, d) for d in shape[1:])
    if r0 == r1:
        for box, n in flat_boxes(shape[1:], off0, off1):
            yield ((r0, r0 + 1),) + box, n
        return
    if off0:
        for box, n in flat_boxes(shape[1:], off0, inner):
            yield ((r0, r0 + 1),) + box, n
        r0 += 1
    if r1 > r0:
        yield ((r0, r1),) + rest, (r1 - r0) * inner
    if off1:
        for box, n in flat_boxes(shape[1:], 0, off1):
            yield ((r1, r1 + 1),) + box, n


def _slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def _create(f: object, t: TensorMeta) -> object:
    """One parameter's dataset: chunked (h5py picks the chunk shape) unless scalar or empty."""
    chunked = bool(t.shape) and all(t.shape)
    dset = f.create_dataset(t.name, shape=t.shape, dtype=TO_NUMPY[t.dtype], chunks=True if chunked else None)
    dset.attrs[DTYPE_ATTR] = t.dtype
    return dset


class Hdf5PartTarget:
    """A `TargetWriter` for one part file of an HDF5 store: datasets created up front (so empty tensors
    exist too), filled as pieces arrive, published by close + fsync + rename."""

    def __init__(self, path: str, tensors: Sequence[TensorMeta]) -> None:
        import h5py
        import numpy

        self._np = numpy
        self.path = path
        self.tmp = temp_path(path)
        self._file: h5py.File | None = h5py.File(self.tmp, "w")
        try:
            for t in tensors:
                _create(self._file, t)
        except BaseException:
            self.abort()
            raise
        self._tensor: TensorMeta | None = None
        self._dset: object | None = None  # only the open tensor's dataset is held (each holds a chunk cache)
        self._done = 0  # elements of the open tensor already written
        self._carry = b""  # a partial element left by a piece (pieces normally end on elements)
        self._stream = TensorStream(path, tensors, self._begin, self._piece)

    def _begin(self, t: TensorMeta) -> None:
        assert self._file is not None
        self._dset = None
        self._file.flush()  # the finished tensor's chunks leave memory
        self._tensor, self._done, self._carry = t, 0, b""
        self._dset = self._file[t.name]

    def _piece(self, data: memoryview) -> None:
        t = self._tensor
        assert t is not None and self._dset is not None
        size = itemsize(t.dtype)
        raw = self._carry + bytes(data) if self._carry else data
        whole = len(raw) // size
        self._carry = bytes(raw[whole * size:])
        values = self._np.frombuffer(raw, dtype=TO_NUMPY[t.dtype], count=whole)
        dset, pos = self._dset, 0
        for box, n in flat_boxes(t.shape, self._done, self._done + whole):
            dset[_slices(box)] = values[pos:pos + n].reshape([b - a for a, b in box])
            pos += n
        self._done += whole

    def write(self, data: memoryview) -> None:
        if self._file is None:
            raise ValueError(f"writer for {self.path} is already closed")
        self._stream.write(data)

    def commit(self) -> Published:
        """Publish only a part whose every tensor got all its bytes."""
        missing = self._stream.missing()
        if missing is not None:
            self.abort()
            raise MpitransError(f"{self.path}: incomplete (parameter {missing!r} and later got no bytes); "
                                f"not published")
        assert self._file is not None
        try:
            self._dset = None
            self._file.close()
            self._file = None
            size, crc = _sync(self.tmp)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        return Published(self.path, size, crc)

    def abort(self) -> None:
        self._dset = None
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


def _sync(path: str) -> tuple[int, int]:
    """fsync a closed file; its (size, CRC-32C)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return checksum.file_crc32c(path)


def write_master(path: str, parts: Mapping[str, Sequence[TensorMeta]], order: Sequence[str],
                 attrs: Mapping[str, str]) -> None:
    """The master file: every parameter of every part (`parts`: part file name beside `path` -> its
    tensors) as a virtual dataset of the same shape and type; published atomically."""
    import h5py

    tmp = temp_path(path)
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            for file, tensors in parts.items():
                for t in tensors:
                    layout = h5py.VirtualLayout(shape=t.shape, dtype=TO_NUMPY[t.dtype])
                    layout[...] = h5py.VirtualSource(file, t.name, shape=t.shape)
                    f.create_virtual_dataset(t.name, layout).attrs[DTYPE_ATTR] = t.dtype
            f.attrs[ORDER_ATTR] = json.dumps(list(order))
            for key, value in attrs.items():
                f.attrs[key] = value
        _sync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _dtype_of(path: str, name: str, dset: object) -> str:
    named = dset.attrs.get(DTYPE_ATTR)
    if isinstance(named, bytes):
        named = named.decode()
    dtype = named if isinstance(named, str) else _FROM_NUMPY.get(dset.dtype.str)
    if dtype not in TO_NUMPY or dset.dtype.str != TO_NUMPY[dtype]:
        raise CheckpointFormatError(f"{path}: dataset {name!r} has type {dset.dtype.str} "
                                    f"({DTYPE_ATTR}={named!r}), not one mpitrans reads")
    return dtype


def _index(path: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of every dataset, in the master's recorded order when it has one; virtual
    datasets checked to have their part files."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        found: dict[str, tuple[str, str, tuple[int, ...]]] = {}

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                _check_parts(path, name, obj)
                found[name] = (name, _dtype_of(path, name, obj), tuple(int(d) for d in obj.shape))

        f.visititems(visit)
        order = f.attrs.get(ORDER_ATTR)
    names = json.loads(order) if order is not None else sorted(found)
    missing = [n for n in names if n not in found]
    if missing:
        raise CheckpointFormatError(f"{path}: dataset {missing[0]!r} is listed in {ORDER_ATTR} but missing "
                                    f"from the file")
    return [found[n] for n in names] + [v for k, v in sorted(found.items()) if k not in set(names)]


def _check_parts(path: str, name: str, dset: object) -> None:
    if not dset.is_virtual:
        return
    folder = os.path.dirname(os.path.abspath(path))
    for source in dset.virtual_sources():
        file = source.file_name
        if file != "." and not os.path.isfile(os.path.join(folder, file)):
            raise CheckpointFormatError(f"{path}: dataset {name!r} maps to {file}, which is missing from {folder}")


class Hdf5Source:
    """A `SourceReader` for `.h5`: datasets listed once (or from a peer's index), boxes read with
    `dset.read_direct` into the caller's buffer."""

    def __init__(self, path: str, index: bytes | None = None) -> None:
        self.path = path
        if index is None:
            entries = _index(path)
        else:
            try:
                entries = [(n, d, tuple(s)) for n, d, s in json.loads(index)]
            except (ValueError, TypeError) as exc:
                raise CheckpointFormatError(f"{path}: damaged index received from a peer ({exc})") from None
        self._metas = {n: TensorMeta(n, d, s) for n, d, s in entries}
        self._file: object | None = None

    def tensors(self) -> list[TensorMeta]:
        return list(self._metas.values())

    def export_index(self) -> bytes:
        return json.dumps([[t.name, t.dtype, list(t.shape)] for t in self._metas.values()]).encode()

    def read_box(self, name: str, box: Box, out: memoryview) -> None:
        import h5py
        import numpy

        t = self._metas.get(name)
        if t is None:
            raise MpitransError(f"{self.path}: parameter {name!r} is not in this file")
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        dset = self._file[name]
        shape = [b - a for a, b in box]
        dest = numpy.frombuffer(out, dtype=TO_NUMPY[t.dtype], count=prod(shape)).reshape(shape)
        if dest.size:
            dset.read_direct(dest, _slices(box) if box else ())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
