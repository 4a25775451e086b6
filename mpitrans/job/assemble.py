"""Placing a piece's bytes into its chunk: straight into place when the piece is one contiguous run of
the chunk, else scattered through a numpy view of the enclosing block."""

from __future__ import annotations

from math import prod

import numpy as np

from mpitrans.plan.layout import Box, box_shape
from mpitrans.plan.schedule import Piece


def _is_contiguous_sub_box(box: Box, shape: tuple[int, ...]) -> bool:
    """True when `box` inside a C-contiguous block of `shape` is itself one contiguous byte run."""
    p = 0
    while p < len(shape) - 1 and box[p][1] - box[p][0] == 1:
        p += 1
    return all(box[q] == (0, shape[q]) for q in range(p + 1, len(shape)))


def _flat_offset(box: Box, shape: tuple[int, ...]) -> int:
    off = 0
    for (a, _), s in zip(box, shape, strict=True):
        off = off * s + a
    return off


_RUNS: dict[tuple, int] = {}  # (in_block, block_shape) -> element offset of the run in its block, or -1


def _run_start(in_block: Box, shape: tuple[int, ...]) -> int:
    """`_flat_offset` of a box that is one run of its block, else -1; pieces of one layout class repeat
    the same few (box, block) pairs, so each is worked out once."""
    key = (in_block, shape)
    found = _RUNS.get(key)
    if found is None:
        if len(_RUNS) > 1 << 16:
            _RUNS.clear()
        found = _RUNS[key] = _flat_offset(in_block, shape) if _is_contiguous_sub_box(in_block, shape) else -1
    return found


def target_view(buf: memoryview | bytearray, piece: Piece) -> memoryview | None:
    """Where the piece lands in the chunk, when that is one run (so it can be read straight into it)."""
    start = _run_start(piece.in_block, piece.block_shape)
    if start < 0:
        return None
    start = piece.block_offset + start * piece.itemsize
    return memoryview(buf)[start:start + piece.nbytes]


def scatter(buf: memoryview | bytearray, piece: Piece, data: memoryview) -> None:
    """Copy the piece's C-order bytes into their place in the chunk."""
    view = target_view(buf, piece)
    if view is not None:
        view[:] = data
        return
    n = prod(piece.block_shape) * piece.itemsize
    block = np.frombuffer(buf, dtype=np.uint8, count=n, offset=piece.block_offset)
    block = block.reshape((*piece.block_shape, piece.itemsize))
    sel = tuple(slice(a, b) for a, b in piece.in_block)
    block[sel] = np.frombuffer(data, dtype=np.uint8).reshape((*box_shape(piece.in_block), piece.itemsize))
