"""The layout algebra against MindSpore's own slicing of a full tensor, on random layouts."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mpitrans.errors import LayoutError
from mpitrans.fixtures.layouts import to_mindspore_list
from mpitrans.fixtures.random_layouts import random_layout
from mpitrans.plan.layout import device_box, flatten_layout
from mpitrans.strategy.model import ParamLayout

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
        layout = random_layout(rng, len(shape)).to_param_layout()
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


