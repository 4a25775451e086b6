"""The arithmetic overlap search against brute-force enumeration of every source rank's box.

Which shards a target box overlaps, in which order, and which ranks hold each (in which order) decide
which file the engine reads and MindSpore-exact candidate order, so the comparison is on the full
structure: boxes, intersections and member lists.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mpitrans.errors import LayoutError
from mpitrans.fixtures.random_layouts import random_layout
from mpitrans.plan.layout import FlatLayout, device_box, flatten_layout
from mpitrans.plan.overlap import brute_force_shards, overlapping_shards
from mpitrans.strategy.model import ParamLayout

DEVICE_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
DIM_UNITS = (1, 2, 3, 4, 6)


@st.composite
def layouts(draw, shape: tuple[int, ...]) -> ParamLayout:
    """A layout training writes for `shape`: any factorization of the device count (uneven counts
    included), splits that divide the shape (sometimes two axes on one dimension), often optimizer
    sharding."""
    rng = draw(st.randoms(use_true_random=False))
    entry = random_layout(rng, profile="training", shape=shape, devices=draw(st.sampled_from(DEVICE_COUNTS)),
                          multi_axis=True, opt_shard=draw(st.sampled_from((None, -1, 2, 3, 4))))
    return entry.to_param_layout()


@st.composite
def source_and_target(draw) -> tuple[FlatLayout, tuple[tuple[int, int], ...]]:
    """A source flat layout and a target box: another layout's shard, or any box of the tensor."""
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.sampled_from(DIM_UNITS)) * 96 for _ in range(ndim))
    try:
        flat = flatten_layout(draw(layouts(shape)), shape)
    except LayoutError:
        flat = flatten_layout(None, shape)
    if draw(st.booleans()):
        try:
            dst = flatten_layout(draw(layouts(shape)), shape)
        except LayoutError:
            dst = flatten_layout(None, shape)
        return flat, device_box(dst, draw(st.integers(0, dst.device_num - 1)))
    box = []
    for s in shape:
        lo = draw(st.integers(0, s - 1))
        box.append((lo, draw(st.integers(lo + 1, s))))
    return flat, tuple(box)


@settings(max_examples=400, deadline=None)
@given(source_and_target())
def test_overlap_search_equals_brute_force(case):
    flat, target = case
    assert overlapping_shards(flat, target) == brute_force_shards(flat, target)


def _flat(layout: ParamLayout, shape: tuple[int, ...]) -> FlatLayout:
    return flatten_layout(layout, shape)


@pytest.mark.parametrize(("src", "dst", "shape"), [
    # 3 -> 2 ranks, rows: every target overlaps two of the three source shards
    (ParamLayout((3,), (0, -1), (), 0, 0, 0, (0,)), ParamLayout((2,), (0, -1), (), 0, 0, 0, (0,)), (12, 4)),
    # dp2 x mp4 -> dp1 x mp2, with optimizer sharding over the data-parallel replicas
    (ParamLayout((2, 4), (-1, 0), (), 0, 4, -1, (0,)), ParamLayout((1, 2), (-1, 0), (), 0, 0, 0, (0,)), (16, 8)),
    # multi-axis dimension 0 over two axes, replicated over the third
    (ParamLayout((2, 3, 2), ((2, 0), (-1,)), (), 0, 0, 0, (0,)), ParamLayout((6,), (0, -1), (), 0, 0, 0, (0,)),
     (24, 6)),
    # a replicated (scalar) tensor
    (ParamLayout((2, 2), (), (), 0, 0, 0, (0,)), None, ()),
])
def test_known_layouts(src, dst, shape):
    flat = _flat(src, shape)
    dst_flat = flatten_layout(dst, shape)
    for rank in range(dst_flat.device_num):
        target = device_box(dst_flat, rank)
        assert overlapping_shards(flat, target) == brute_force_shards(flat, target)


def test_three_to_two_order_and_members():
    # dp2 x mp3 rows -> 2 shards: target 0 (rows 0-5) meets source shards 0 (rows 0-3) and 1 (rows 4-7),
    # each held by local ranks r and r + 3.
    flat = _flat(ParamLayout((2, 3), (0, -1), (), 0, 0, 0, (0,)), (12, 4))
    assert overlapping_shards(flat, ((0, 6), (0, 4))) == [
        (((0, 4), (0, 4)), ((0, 4), (0, 4)), [0, 3]),
        (((4, 8), (0, 4)), ((4, 6), (0, 4)), [1, 4]),
    ]


@st.composite
def raw_flat_layouts(draw) -> FlatLayout:
    """Flat layouts built directly, outside what flatten_layout produces: shards that are not contiguous,
    sizes that do not divide, an axis splitting two dimensions (the search must then behave like the
    brute force, errors included)."""
    dev = tuple(draw(st.lists(st.sampled_from((1, 2, 3)), min_size=1, max_size=3)))
    groups = tuple(draw(st.lists(st.integers(1, 2), max_size=3)))
    n = sum(groups)
    shape = tuple(draw(st.sampled_from((1, 2, 3, 4, 6))) for _ in range(n))
    tmap = tuple(draw(st.sampled_from([-1, *range(len(dev))])) for _ in range(n))
    return FlatLayout(dev, tmap, shape, groups)


@settings(max_examples=400, deadline=None)
@given(raw_flat_layouts(), st.data())
@example(FlatLayout((2,), (0,), (3,), (1,)), None)  # a size the axis does not divide
@example(FlatLayout((2,), (-1, 0), (2, 4), (2,)), None)  # a shard that is not contiguous
@example(FlatLayout((2, 2), (0, 0), (4, 4), (1, 1)), None)  # one axis splitting two dimensions
def test_overlap_search_equals_brute_force_on_raw_layouts(flat, data):
    full = tuple((0, s) for s in _full_shape(flat))
    target = full if data is None else tuple(
        (lo, data.draw(st.integers(lo + 1, hi))) for lo, hi in
        ((data.draw(st.integers(0, e - 1)), e) for _, e in full))
    try:
        expected = brute_force_shards(flat, target)
    except LayoutError as exc:
        with pytest.raises(LayoutError, match=str(exc).replace("[", r"\[").replace("]", r"\]")):
            overlapping_shards(flat, target)
        return
    assert overlapping_shards(flat, target) == expected


def _full_shape(flat: FlatLayout) -> tuple[int, ...]:
    out, pos = [], 0
    for g in flat.groups:
        size = 1
        for s in flat.shape[pos:pos + g]:
            size *= s
        out.append(size)
        pos += g
    return tuple(out)
