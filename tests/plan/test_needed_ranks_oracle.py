"""Our restatement of MindSpore's needed-rank rule against MindSpore itself, on random layout pairs."""

from __future__ import annotations

import random
from math import prod

import pytest

from mpitrans.errors import LayoutError
from mpitrans.fixtures.layouts import to_mindspore_list
from mpitrans.fixtures.random_layouts import random_layout
from mpitrans.plan.layout import flatten_layout, resolved_opt_shard_size, tensor_strategy
from mpitrans.plan.needed_ranks import needed_source_ranks

ms_serial = pytest.importorskip("mindspore.parallel._parallel_serialization")


def _probe_shape(src, dst, ndim):
    n = max(prod(src.dev_matrix), prod(dst.dev_matrix) if dst else 1)
    split = tensor_strategy(src.dev_matrix, src.tensor_map)
    opt = resolved_opt_shard_size(src)
    return [n * split[i] * (opt if i == 0 and opt > 0 else 1) for i in range(ndim)]


@pytest.mark.parametrize("seed", range(5))
def test_needed_ranks_match_mindspore(seed):
    rng = random.Random(100 + seed)
    compared = 0
    for _ in range(80):
        ndim = rng.choice([1, 2, 3])
        src = random_layout(rng, ndim).to_param_layout()
        dst = random_layout(rng, ndim).to_param_layout() if rng.random() < 0.85 else None
        n_src, n_dst = prod(src.dev_matrix), prod(dst.dev_matrix) if dst else 1
        if max(n_src, n_dst) % min(n_src, n_dst):
            continue
        shape = _probe_shape(src, dst, ndim)
        for t in range(n_dst):
            try:
                expected = sorted(int(r) for r in ms_serial._rank_list_for_transform_parallel_checkpoint(
                    t, {"p": to_mindspore_list(src)}, {"p": to_mindspore_list(dst)} if dst else None))
            except Exception:  # noqa: BLE001 - MindSpore rejects the pair; nothing to compare
                break
            try:
                got = sorted(needed_source_ranks(t, flatten_layout(src, shape), flatten_layout(dst, shape)))
            except LayoutError:
                # Only layouts MindSpore handles inconsistently (an optimizer shard larger than the
                # replica count) may be refused by us while MindSpore answers.
                assert resolved_opt_shard_size(src) > 0 or (dst and resolved_opt_shard_size(dst) > 0)
                break
            assert got == expected, (src, dst, t)
            compared += 1
    assert compared > 30
