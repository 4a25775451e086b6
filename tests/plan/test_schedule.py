"""Chunking: every byte of every target tensor is produced exactly once, by the planned source box."""

from __future__ import annotations

import itertools
import random
from math import prod

import numpy as np
import pytest

from mpitrans.plan.planner import OutTensor, Region, TargetPlan
from mpitrans.plan.schedule import build_chunks, contiguous_boxes


@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 3, 4), (4, 1, 3, 2)])
def test_contiguous_boxes_tile_every_range(shape):
    n = prod(shape)
    flat = np.arange(n).reshape(shape) if shape else np.array(0)
    for a, b in itertools.combinations(range(n + 1), 2):
        got = []
        for box, offset in contiguous_boxes(shape, a, b):
            part = flat[tuple(slice(x, y) for x, y in box)].reshape(-1)
            assert list(part) == list(range(a + offset, a + offset + part.size))
            got.extend(part.tolist())
        assert got == list(range(a, b))
        assert len(contiguous_boxes(shape, a, b)) <= max(1, 2 * len(shape) - 1)


def _random_regions(rng, shape, first_source):
    """Cut a tensor into a grid of boxes, each a region read from its own made-up source shard, where it
    sits at a random offset."""
    cuts = [sorted({0, s, *(rng.randrange(1, s) for _ in range(rng.randrange(3)) if s > 1)}) for s in shape]
    regions = []
    for i, cell in enumerate(itertools.product(*[list(zip(c, c[1:], strict=False)) for c in cuts])):
        shift = [rng.randrange(3) for _ in shape]
        src = tuple((a + d, b + d) for (a, b), d in zip(cell, shift, strict=True))
        regions.append(Region(tuple(cell), src, (first_source + i,)))
    return regions


DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8}


def _sources_for(tensor: OutTensor, values: np.ndarray, rng: random.Random) -> dict[int, np.ndarray]:
    """Each region's source shard: noise, with the region's part of `values` at its `src_box`."""
    out = {}
    for region in tensor.regions:
        extent = tuple(b + rng.randrange(2) for _, b in region.src_box)
        shard = np.frombuffer(bytes(rng.randrange(256) for _ in range(values.itemsize * prod(extent))),
                              dtype=values.dtype).reshape(extent).copy()
        shard[tuple(slice(a, b) for a, b in region.src_box)] = values[tuple(slice(a, b) for a, b in region.dst_box)]
        out[region.candidates[0]] = shard
    return out


@pytest.mark.parametrize("seed", range(12))
def test_every_chunk_holds_the_planned_bytes(seed):
    """Assemble every chunk from its pieces (reading each piece's `src_box` of its source shard) and check
    each segment's bytes are the target tensor's elements: coverage, offsets and source boxes at once."""
    rng = random.Random(seed)
    targets, values, shards = [], {}, {}
    for t in range(2):
        tensors = []
        for k in range(rng.randrange(1, 5)):
            shape = tuple(rng.randrange(1, 6) for _ in range(rng.randrange(0, 4)))
            dtype = rng.choice(list(DTYPES))
            tensor = OutTensor(f"t{k}", dtype, shape, tuple(_random_regions(rng, shape, len(shards) + 1000 * t)))
            want = np.frombuffer(bytes(rng.randrange(256) for _ in range(np.dtype(DTYPES[dtype]).itemsize *
                                                                         prod(shape))), DTYPES[dtype]).reshape(shape)
            values[(t, k)] = want
            shards.update(_sources_for(tensor, want, rng))
            tensors.append(tensor)
        targets.append(TargetPlan(t, f"f{t}", tensors))
    chunk_bytes = rng.choice([4, 16, 64, 1 << 20])
    readers = {(t.rank, ki, ri): (0, region.candidates[0]) for t in targets for ki, x in enumerate(t.tensors)
               for ri, region in enumerate(x.regions)}
    covered = set()
    for chunk in build_chunks(targets, chunk_bytes, readers):
        assert chunk.nbytes <= max(chunk_bytes, 4)
        assert sum(p.nbytes for p in chunk.pieces) == chunk.nbytes
        buf = np.zeros(chunk.nbytes, dtype=np.uint8)
        for p in chunk.pieces:
            data = np.ascontiguousarray(shards[p.src_rank][tuple(slice(a, b) for a, b in p.src_box)])
            block = buf[p.block_offset:p.block_offset + prod(p.block_shape) * p.itemsize]
            block = block.reshape((*p.block_shape, p.itemsize))
            block[tuple(slice(a, b) for a, b in p.in_block)] = data.view(np.uint8).reshape(
                (*data.shape, p.itemsize))
        for seg in chunk.segments:
            tensor = targets[seg.target_index].tensors[seg.tensor_index]
            want = values[(seg.target_index, seg.tensor_index)].reshape(-1)[seg.start:seg.stop]
            got = buf[seg.chunk_offset:seg.chunk_offset + want.nbytes]
            assert got.tobytes() == want.tobytes(), (seed, tensor.name, seg)
            for e in range(seg.start, seg.stop):
                key = (seg.target_index, seg.tensor_index, e)
                assert key not in covered
                covered.add(key)
    expected = {(ti, ki, e) for ti, t in enumerate(targets) for ki, x in enumerate(t.tensors)
                for e in range(prod(x.shape))}
    assert covered == expected
