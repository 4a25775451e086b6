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


def _random_regions(rng, shape):
    """Cut a tensor into a grid of boxes, each a region sourced from a made-up shard."""
    cuts = [sorted({0, s, *(rng.randrange(1, s) for _ in range(rng.randrange(3)) if s > 1)}) for s in shape]
    regions = []
    for cell in itertools.product(*[list(zip(c, c[1:], strict=False)) for c in cuts]):
        shift = [rng.randrange(3) for _ in shape]
        src = tuple((a + d, b + d) for (a, b), d in zip(cell, shift, strict=True))
        regions.append(Region(tuple(cell), src, (rng.randrange(4),)))
    return regions


@pytest.mark.parametrize("seed", range(10))
def test_chunks_cover_each_element_once(seed):
    rng = random.Random(seed)
    targets = []
    for t in range(2):
        tensors = []
        for k in range(rng.randrange(1, 5)):
            shape = tuple(rng.randrange(1, 6) for _ in range(rng.randrange(0, 4)))
            tensors.append(OutTensor(f"t{k}", rng.choice(["Float32", "Float16", "Int8"]), shape,
                                     tuple(_random_regions(rng, shape))))
        targets.append(TargetPlan(t, f"f{t}.ckpt", tensors))
    sizes = {"Float32": 4, "Float16": 2, "Int8": 1}
    chunk_bytes = rng.choice([4, 16, 64, 1 << 20])
    covered = {}
    def reader(target, tensor, ri):
        return 0, tensor.regions[ri].candidates[0]

    for chunk in build_chunks(targets, chunk_bytes, sizes.__getitem__, reader):
        assert chunk.nbytes <= max(chunk_bytes, 4)
        assert sum(p.nbytes for p in chunk.pieces) == chunk.nbytes
        for seg in chunk.segments:
            for e in range(seg.start, seg.stop):
                key = (seg.target_index, seg.tensor_index, e)
                assert key not in covered
                covered[key] = True
    expected = {(ti, ki, e) for ti, t in enumerate(targets) for ki, x in enumerate(t.tensors)
                for e in range(prod(x.shape))}
    assert set(covered) == expected
