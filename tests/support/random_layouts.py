"""Seeded random parameter layouts (valid and invalid) for property tests of the layout algebra."""

from __future__ import annotations

import random
from math import prod

from mpitrans.plan.layout import tensor_strategy
from mpitrans.strategy.model import ParamLayout


def random_layout(rng: random.Random, ndim: int, opt_shard: bool | None = None) -> ParamLayout:
    """A device matrix of 1-16 devices, a tensor map using some of its axes (sometimes two axes on one
    dimension, MindSpore's multi-axis form), and sometimes optimizer sharding."""
    n = rng.choice([1, 2, 4, 8])
    dev: list[int] = []
    m = n
    while m > 1:
        f = rng.choice([d for d in (2, 4) if m % d == 0])
        dev.append(f)
        m //= f
    if rng.random() < 0.3:
        dev.insert(rng.randrange(len(dev) + 1), 2)
    if not dev:
        dev = [1]
    axes = list(range(len(dev)))
    rng.shuffle(axes)
    tmap: list = []
    for _ in range(ndim):
        r = rng.random()
        if r < 0.4 or not axes:
            tmap.append(-1)
        elif r < 0.8 or len(axes) < 2:
            tmap.append(axes.pop())
        else:
            tmap.append((axes.pop(), axes.pop()))
    if any(isinstance(e, tuple) for e in tmap):
        tmap = [e if isinstance(e, tuple) else (e,) for e in tmap]
    step = size = 0
    if opt_shard if opt_shard is not None else rng.random() < 0.5:
        size = rng.choice([-1, 2, 4])
        step = prod(tensor_strategy(dev, tmap))
    return ParamLayout(tuple(dev), tuple(tmap), (), 0, step, size, (0,))


def to_mindspore_list(layout: ParamLayout) -> list:
    """The list form MindSpore's private layout helpers take."""
    tmap = [list(e) if isinstance(e, tuple) else e for e in layout.tensor_map]
    return [list(layout.dev_matrix), tmap, [], 0, layout.opt_shard_step, layout.opt_shard_size, [0]]
