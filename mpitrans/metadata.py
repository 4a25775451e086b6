"""The vocabulary every layer shares: what a tensor is (name, dtype, shape) and how big its elements are.

The planner reasons about tensors without knowing any file format, and each storage format translates
its own type names to and from these. Element bytes are opaque everywhere: a dtype only says how many
bytes make one element, so bfloat16 and every other type move bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from mpitrans.errors import UnsupportedError

# Format-neutral dtype names (numpy's spelling, plus bfloat16) -> bytes per element.
DTYPE_SIZES: dict[str, int] = {
    "bool": 1,
    "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8,
}


def itemsize(dtype: str) -> int:
    """Bytes per element; an unknown name is refused so byte arithmetic can never be silently wrong."""
    size = DTYPE_SIZES.get(dtype)
    if size is None:
        raise UnsupportedError(f"tensor type {dtype!r} is not one mpitrans knows")
    return size


@dataclass(frozen=True)
class TensorMeta:
    """One tensor of one file, as the planner sees it."""

    name: str
    dtype: str  # a DTYPE_SIZES key
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * itemsize(self.dtype)
