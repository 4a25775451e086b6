"""`check_sources` judges files by class (one shared metadata list, one pipeline stage) and visits every
file only when a class looks wrong: on random cases, with one file broken in random ways, it accepts and
refuses exactly what the file-by-file checks accept and refuse, with the same message."""

from __future__ import annotations

import random
from unittest import mock

import pytest

from mpitrans.metadata import TensorMeta
from mpitrans.plan import consistency
from mpitrans.plan.consistency import check_sources
from tests.plan.cases import shared_lists, sides, source_metas
from tests.support.layouts import random_case


def break_one(rng: random.Random, metas: dict[int, list[TensorMeta]]) -> dict[int, list[TensorMeta]]:
    """One file with a tensor dropped, retyped or reshaped (or a tensor added), or nothing changed."""
    out = dict(metas)
    g = rng.choice(sorted(out))
    ms = list(out[g])
    if not ms:
        return out
    i = rng.randrange(len(ms))
    m = ms[i]
    what = rng.choice(("none", "drop", "dtype", "shape", "ndim", "extra"))
    if what == "drop":
        del ms[i]
    elif what == "dtype":
        ms[i] = TensorMeta(m.name, "float16" if m.dtype != "float16" else "float32", m.shape)
    elif what == "shape" and m.shape:
        ms[i] = TensorMeta(m.name, m.dtype, (m.shape[0] * 2, *m.shape[1:]))
    elif what == "ndim":
        ms[i] = TensorMeta(m.name, m.dtype, (*m.shape, 1))
    elif what == "extra":
        ms.insert(i, TensorMeta("stray.tensor", "float32", (3,)))
    out[g] = ms
    return out


def outcome(src, dst, metas) -> object:
    paths = {g: f"/src/rank_{g}/checkpoint_{g}.ckpt" for g in metas}
    try:
        return check_sources(src, dst, metas, paths, sorted(metas), "/src")
    except Exception as exc:  # noqa: BLE001 - the same error must come from both
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("seed", range(150))
def test_class_checks_decide_like_file_checks(seed):
    case = random_case(seed)
    src, dst = sides(case)
    rng = random.Random(seed)
    metas = break_one(rng, shared_lists(source_metas(case)))
    fast = outcome(src, dst, metas)
    with mock.patch.object(consistency, "_consistent_by_class", lambda *a: False):
        exact = outcome(src, dst, metas)
    assert fast == exact


def test_files_sharing_a_list_keep_sharing_it():
    case = random_case(5)
    src, dst = sides(case)
    metas = shared_lists(source_metas(case))
    scoped = check_sources(src, dst, metas, {}, sorted(metas), "/src")
    assert scoped == metas
    assert len({id(ms) for ms in scoped.values()}) == len({id(ms) for ms in metas.values()})
