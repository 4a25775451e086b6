"""Placing a piece's bytes into its chunk: straight into place when the piece is one contiguous run of
the chunk, else scattered through a numpy view of the enclosing block."""

from __future__ import annotations

from math import prod

import numpy as np

from mpitrans.plan.layout import box_shape
from mpitrans.plan.schedule import Piece
from mpitrans.storage.base import contiguous_run


def target_view(buf: memoryview | bytearray, piece: Piece) -> memoryview | None:
    """Where the piece lands in the chunk, when that is one run (so it can be read straight into it)."""
    run = contiguous_run(piece.in_block, piece.block_shape)
    if run is None:
        return None
    start = piece.block_offset + run[0] * piece.itemsize
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
