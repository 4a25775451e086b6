"""Cutting each writer's output into bounded chunks, and each chunk into pieces that one reader supplies.

A writer's output is one byte stream: its target files, tensor after tensor, each tensor's elements in
C order. The stream is cut into chunks of at most `chunk_bytes`; the job advances in rounds, and in round
k every writer assembles its k-th chunk. Inside a chunk, a tensor's element range is a few C-contiguous
boxes; intersecting them with the plan's regions gives pieces, each copied from one source shard by one
reader. Memory per round is therefore bounded by the chunk size, however large the model is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from math import prod
from typing import NamedTuple

from mpitrans.metadata import itemsize
from mpitrans.plan.assign import ReaderTable
from mpitrans.plan.layout import Box, box_shape, intersect
from mpitrans.plan.planner import OutTensor, TargetPlan


class Piece(NamedTuple):
    """Bytes of one source-shard box that land in one C-contiguous block of a chunk. (A named tuple: a
    metadata-heavy job makes hundreds of thousands.)"""

    reader: int  # MPI rank that reads the source file
    src_rank: int  # global source rank whose file holds the bytes
    tensor: str
    src_box: Box  # in the source shard's coordinates
    block_offset: int  # byte offset of the enclosing C-contiguous block within the chunk
    block_shape: tuple[int, ...]  # shape of that block
    in_block: Box  # the piece's box inside the block
    itemsize: int
    nbytes: int  # the piece's size: its box's element count times `itemsize`


@dataclass(frozen=True)
class Segment:
    """A run of one tensor's elements written by a chunk."""

    target_index: int  # index into the writer's list of targets
    tensor_index: int
    start: int  # element range [start, stop) of the tensor
    stop: int
    chunk_offset: int  # byte offset in the chunk


@dataclass
class Chunk:
    nbytes: int
    segments: list[Segment]
    pieces: list[Piece]


def contiguous_boxes(shape: Sequence[int], start: int, stop: int) -> list[tuple[Box, int]]:
    """Split the C-order element range [start, stop) into C-contiguous boxes with their element offsets."""
    if not shape:
        return [((), 0)] if start < stop else []
    out: list[tuple[Box, int]] = []

    def rec(prefix: list[tuple[int, int]], dims: Sequence[int], a: int, b: int, offset: int) -> None:
        if a >= b:
            return
        if len(dims) == 1:
            out.append((tuple(prefix) + ((a, b),), offset))
            return
        row = prod(dims[1:])
        if row == 0:
            return
        first, last = a // row, b // row
        if a % row:
            end = min(b, (first + 1) * row)
            rec([*prefix, (first, first + 1)], dims[1:], a % row, end - first * row, offset)
            offset += end - a
            a = end
            first += 1
        if first < last:
            full = tuple((0, d) for d in dims[1:])
            out.append((tuple(prefix) + ((first, last),) + full, offset))
            offset += (last - first) * row
            a = last * row
        if a < b:
            rec([*prefix, (last, last + 1)], dims[1:], 0, b - last * row, offset)

    rec([], list(shape), start, stop, 0)
    return out


def build_chunks(targets: Sequence[TargetPlan], chunk_bytes: int, readers: ReaderTable) -> Iterator[Chunk]:
    """Yield one writer's chunks; `readers` (from `plan.assign`) says who reads each region."""
    segments: list[Segment] = []
    pieces: list[Piece] = []
    used = 0

    def flush() -> Chunk:
        nonlocal segments, pieces, used
        chunk = Chunk(used, segments, pieces)
        segments, pieces, used = [], [], 0
        return chunk

    for ti, target in enumerate(targets):
        for ki, tensor in enumerate(target.tensors):
            isz = itemsize(tensor.dtype)
            count = prod(tensor.shape)
            chosen = [readers[(target.rank, ki, ri)] for ri in range(len(tensor.regions))]
            if count == 0:
                segments.append(Segment(ti, ki, 0, 0, used))
                continue
            pos = 0
            while pos < count:
                room = max((chunk_bytes - used) // isz, 0)
                if room == 0:
                    if used:
                        yield flush()
                        continue
                    room = 1  # a single element larger than the chunk: take it anyway
                end = min(count, pos + room)
                segments.append(Segment(ti, ki, pos, end, used))
                if pos == 0 and end == count:  # the whole tensor: each region lands as it is
                    _whole_tensor(pieces, tensor, chosen, used, isz)
                    used += count * isz
                    pos = end
                    if used >= chunk_bytes:
                        yield flush()
                    continue
                for block, elem_off in contiguous_boxes(tensor.shape, pos, end):
                    block_offset = used + elem_off * isz
                    for ri, region in enumerate(tensor.regions):
                        common = intersect(block, region.dst_box) if block else ()
                        if common is None:
                            continue
                        reader, src_rank = chosen[ri]
                        src_box = tuple(
                            (s0 + (c0 - d0), s0 + (c1 - d0))
                            for (c0, c1), (d0, _), (s0, _) in zip(common, region.dst_box, region.src_box, strict=True)
                        )
                        in_block = tuple((c0 - b0, c1 - b0) for (c0, c1), (b0, _) in zip(common, block, strict=True))
                        pieces.append(
                            Piece(reader, src_rank, tensor.name, src_box, block_offset, box_shape(block),
                                  in_block, isz, prod(box_shape(common)) * isz)
                        )
                used += (end - pos) * isz
                pos = end
                if used >= chunk_bytes:
                    yield flush()
    if segments:
        yield flush()


def _whole_tensor(pieces: list[Piece], tensor: OutTensor, chosen: Sequence[tuple[int, int]], offset: int,
                  isz: int) -> None:
    """The pieces of a tensor that fits in the chunk whole: one per region, its box in the tensor as is."""
    for region, (reader, src_rank) in zip(tensor.regions, chosen, strict=True):
        n = 1
        for a, b in region.dst_box:
            n *= b - a
        if n:
            pieces.append(Piece(reader, src_rank, tensor.name, region.src_box, offset, tensor.shape, region.dst_box,
                                isz, n * isz))
