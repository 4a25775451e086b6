"""Tensor specs and helpers for the .ckpt tests: random raw contents, our writer, boxes, index checks."""

from __future__ import annotations

from math import prod
from pathlib import Path

import numpy as np

from mpitrans.storage import ckpt
from mpitrans.storage.ckpt import CheckpointWriter, index_checkpoint, read_box

DTYPES = list(ckpt.ITEM_SIZES)
OPAQUE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
Spec = tuple[str, str, tuple[int, ...], bytes]  # name, dtype, shape, raw C-order bytes


def random_raw(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> bytes:
    n = prod(shape) * ckpt.ITEM_SIZES[dtype]
    if dtype == "Bool":
        return rng.integers(0, 2, n, dtype=np.uint8).tobytes()
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


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
