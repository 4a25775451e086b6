"""The LoRA merge arithmetic, applied by a writer to its share of a weight as the bytes stream past.

The planner (`plan/lora.py`, `plan/planner.py`) puts, just before each merged weight of a target, the
rows of `B` and the columns of `A` that the target's box of the weight needs, as auxiliary tensors. The
writer keeps those two small slices (out_box x r and r x in_box elements) and, for every run of the
weight's elements a chunk brings, computes `W + (B @ A) * scaling` on that run only, `TILE` elements at a
time: memory stays the chunk, its merged copy, the slices and a few MiB, however large the weight.

Arithmetic is float32 (the weight and the factors are widened), with the rank sum taken in a fixed
order (k = 0, 1, ... r-1), so an element's result does not depend on how the weight is cut into targets
or chunks: a distributed target holds exactly the bytes of the merged full model. The result is rounded
once to the weight's type: round-to-nearest-even for bfloat16 (as MindSpore casts) and float16.
"""

from __future__ import annotations

from collections.abc import Iterator
from math import prod

import numpy as np

from mpitrans.metadata import itemsize
from mpitrans.plan.lora import ROLE_A, ROLE_B
from mpitrans.plan.planner import OutTensor
from mpitrans.plan.schedule import contiguous_boxes

# Elements merged per step: the float32 temporaries (tile, product, one rank term) stay a few MiB.
TILE = 1 << 18


def to_float32(raw: bytes | memoryview, dtype: str) -> np.ndarray:
    """Elements of `dtype` (float16, bfloat16, float32) widened to float32, exactly."""
    if dtype == "bfloat16":
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(np.float32)


def from_float32(x: np.ndarray, dtype: str) -> bytes:
    """float32 values rounded once to `dtype`: round-to-nearest-even, NaN kept quiet."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype != "bfloat16":
        return x.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    u = x.view(np.uint32)
    with np.errstate(over="ignore"):
        rounded = (u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16
    quiet_nan = (u >> 16) | 0x40
    return np.where(np.isnan(x), quiet_nan, rounded).astype("<u2").tobytes()


def lora_delta(b: np.ndarray, a: np.ndarray, scaling: float) -> np.ndarray:
    """(b @ a) * scaling in float32, the rank sum in the fixed order k = 0..r-1 (see the module note)."""
    shape = (b.shape[0], a.shape[1])
    acc, term = np.zeros(shape, dtype=np.float32), np.empty(shape, dtype=np.float32)
    for k in range(b.shape[1]):
        np.multiply(b[:, k:k + 1], a[k:k + 1, :], out=term)
        acc += term
    acc *= np.float32(scaling)
    return acc


class LoraMerger:
    """One writer's merge state: the factor slices of the weight that comes next."""

    def __init__(self) -> None:
        self._raw: dict[str, bytearray] = {}
        self._shape: dict[str, tuple[int, ...]] = {}
        self._dtype: dict[str, str] = {}
        self._f32: dict[str, np.ndarray] = {}

    def take(self, tensor: OutTensor, start: int, data: memoryview) -> None:
        """Keep elements [start, start + len) of a factor slice (`tensor.role` says which)."""
        isz = itemsize(tensor.dtype)
        if start == 0:
            self._raw[tensor.role] = bytearray(prod(tensor.shape) * isz)
            self._shape[tensor.role], self._dtype[tensor.role] = tensor.shape, tensor.dtype
            self._f32.pop(tensor.role, None)
        self._raw[tensor.role][start * isz:start * isz + len(data)] = data

    def _factor(self, role: str) -> np.ndarray:
        if role not in self._f32:
            self._f32[role] = to_float32(self._raw.pop(role), self._dtype[role]).reshape(self._shape[role])
        return self._f32[role]

    def merge(self, tensor: OutTensor, start: int, stop: int, data: memoryview) -> bytes:
        """The merged bytes of elements [start, stop) of the weight `tensor` (its shard in this target),
        computed one tile of at most `TILE` elements at a time."""
        b, a = self._factor(ROLE_B), self._factor(ROLE_A)
        isz = itemsize(tensor.dtype)
        out = bytearray(len(data))
        for ((r0, r1), (c0, c1)), off in contiguous_boxes(tensor.shape, start, stop):
            for (t0, t1, u0, u1), rel in _tiles(r0, r1, c0, c1):
                lo, hi = (off + rel) * isz, (off + rel + (t1 - t0) * (u1 - u0)) * isz
                tile = to_float32(data[lo:hi], tensor.dtype).reshape(t1 - t0, u1 - u0)
                tile += lora_delta(b[t0:t1], a[:, u0:u1], tensor.lora_scaling)
                out[lo:hi] = from_float32(tile, tensor.dtype)
        if stop == prod(tensor.shape):
            self._f32.clear()
        return bytes(out)


def _tiles(r0: int, r1: int, c0: int, c1: int) -> Iterator[tuple[tuple[int, int, int, int], int]]:
    """A C-contiguous box of the weight cut into tiles of at most `TILE` elements (whole rows of the box,
    or pieces of one row when a row is longer), each with its element offset in the box."""
    width = c1 - c0
    if width <= TILE:
        step = max(1, TILE // max(width, 1))
        for i in range(r0, r1, step):
            yield (i, min(r1, i + step), c0, c1), (i - r0) * width
        return
    for i in range(r0, r1):
        for j in range(c0, c1, TILE):
            yield (i, i + 1, j, min(c1, j + TILE)), (i - r0) * width + (j - c0)
