"""The layout algebra against MindSpore's own slicing of a full tensor, on random layouts."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mpitrans.errors import LayoutError
from mpitrans.plan.layout import device_box, flatten_layout, intersect, origin_shape, relative
from mpitrans.strategy.model import ParamLayout
from tests.support.random_layouts import random_layout, to_mindspore_list

ms_serial = pytest.importorskip("mindspore.parallel._parallel_serialization")


def mindspore_slice(full: np.ndarray, layout: ParamLayout, rank: int) -> np.ndarray:
    """What MindSpore's transformer gives `rank` when the source is the unsplit tensor."""
    out = ms_serial._transform_parallel_checkpoint(
        rank, {"p": {0: full}}, {"p": {0: (True, False)}}, None, {"p": to_mindspore_list(layout)},
        {"p": {0: "Float32"}},
    )
    return out[0]["data"].asnumpy()


@pytest.mark.parametrize("seed", range(6))
def test_device_boxes_match_mindspore(seed):
    rng = random.Random(seed)
    checked = 0
    for _ in range(60):
        shape = [rng.choice([8, 16, 32]) for _ in range(rng.choice([1, 2, 3]))]
        layout = random_layout(rng, len(shape))
        full = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
        try:
            flat = flatten_layout(layout, shape)
        except LayoutError as exc:
            # We refuse an optimizer shard that does not fit the replicas (MindSpore silently slices
            # garbage for some of those); anything else we refuse, MindSpore must refuse too.
            if "optimizer shard" not in str(exc):
                with pytest.raises(Exception):  # noqa: B017
                    for rank in range(int(np.prod(layout.dev_matrix))):
                        mindspore_slice(full, layout, rank)
            continue
        for rank in range(flat.device_num):
            box = device_box(flat, rank)
            expected = mindspore_slice(full, layout, rank)
            got = full[tuple(slice(a, b) for a, b in box)]
            assert got.shape == expected.shape and np.array_equal(got, expected), (layout, shape, rank)
            checked += 1
    assert checked > 50


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
