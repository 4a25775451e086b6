"""The layout algebra on hand-worked layouts: device boxes, optimizer shards, refusals, box helpers.

Random layouts against MindSpore's own slicing are in `test_layout_oracle.py`.
"""

from __future__ import annotations

import pytest

from mpitrans.errors import LayoutError
from mpitrans.plan.layout import device_box, flatten_layout, intersect, origin_shape, relative
from mpitrans.strategy.model import ParamLayout


def test_classic_dp_mp_boxes():
    # dp2 x mp4, weight split by rows over mp: ranks 0-3 and 4-7 are the two replicas.
    layout = ParamLayout((2, 4), (0, -1), (), 0, 0, 0, (0,))
    flat = flatten_layout(layout, (16, 6))
    assert [device_box(flat, r) for r in range(8)] == [((4 * (r % 4), 4 * (r % 4) + 4), (0, 6)) for r in range(8)]


def test_optimizer_shard_splits_dimension_zero_over_replicas():
    # dp2 x mp4, columns over mp, optimizer shard 2: each rank holds half of the rows of its column block.
    layout = ParamLayout((2, 4), (-1, 0), (), 0, 4, 2, (0,))
    full = origin_shape((4, 2), layout)
    assert full == (8, 8)
    flat = flatten_layout(layout, full)
    assert device_box(flat, 0) == ((0, 4), (0, 2))
    assert device_box(flat, 5) == ((4, 8), (2, 4))


def test_indivisible_shape_is_a_clear_error():
    layout = ParamLayout((4,), (0,), (), 0, 0, 0, (0,))
    with pytest.raises(LayoutError, match="not divisible"):
        flatten_layout(layout, (6,))


def test_box_helpers():
    assert intersect(((0, 4), (2, 6)), ((2, 8), (0, 3))) == ((2, 4), (2, 3))
    assert intersect(((0, 2),), ((2, 4),)) is None
    assert relative(((2, 4), (2, 3)), ((2, 8), (0, 3))) == ((0, 2), (2, 3))
