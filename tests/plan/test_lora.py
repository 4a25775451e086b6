"""LoRA merge planning: MindFormers' pairing rules, the scaling's forms, and the factor slices each target
shard of a weight is given (pure: synthetic metadata and strategy files, no MindSpore)."""

from __future__ import annotations

import pytest

from mpitrans import strategy
from mpitrans.errors import MpitransError
from mpitrans.fixtures.strategies import write_strategy_file
from mpitrans.job.options import JobOptions
from mpitrans.metadata import TensorMeta
from mpitrans.plan.layout import box_shape
from mpitrans.plan.lora import ROLE_A, ROLE_B, LoraMerge, b_of, parse_scaling, weight_of
from mpitrans.plan.planner import Planner
from tests.support.layouts import with_layout
from tests.support.lora_oracle import IN, OUT, RANK, lora_model


def test_scaling_forms():
    assert parse_scaling("16/8") == 2.0 and parse_scaling(" 1 / 4 ") == 0.25 and parse_scaling("0.5") == 0.5
    assert parse_scaling(3) == 3.0 and parse_scaling("2e-1") == pytest.approx(0.2)
    for bad in ("16/0", "alpha/rank", "", True):
        with pytest.raises(MpitransError, match="lora-scaling"):
            parse_scaling(bad)
    assert JobOptions("s", "d", lora_scaling="16/8").selection().lora == LoraMerge(2.0)
    assert JobOptions("s", "d", lora_merge=True).selection().lora == LoraMerge(1.0)
    assert JobOptions("s", "d").selection().lora is None


def test_names_are_paired_as_mindformers_pairs_them():
    assert weight_of("m.wq.mindpet_delta_lora_a") == "m.wq.weight" and b_of("m.wq.mindpet_delta_lora_a") == \
        "m.wq.mindpet_delta_lora_b"
    assert weight_of("m.wo.lora_A.weight") == "m.wo.weight" and b_of("m.wo.lora_A.weight") == "m.wo.lora_B.weight"
    assert weight_of("m.w1_lora_a") == "m.w1" and b_of("m.w1_lora_a") == "m.w1_lora_b"
    names = [p.name for p in lora_model()]
    pairs = LoraMerge().pairs(names)
    assert sorted(pairs) == ["layers.0.wo.weight", "layers.0.wq.weight", "layers.1.w3.weight"]
    # Adam's copies of the factors are not pairs (MindFormers skips them; they are dropped).
    assert all(not p.a.startswith("adam_") for p in pairs.values())


@pytest.mark.parametrize("names, match", [
    (["w.weight", "w.mindpet_delta_lora_a"], "B factor of .* would be 'w.mindpet_delta_lora_b'"),
    (["w.mindpet_delta_lora_a", "w.mindpet_delta_lora_b"], "weight of .* would be 'w.weight'"),
    (["w.lora_a", "w.lora_b"], "weight of parameter 'w.lora_a' would be 'w.lora_a'"),
    (["w.weight", "x.weight"], "hold no LoRA factor"),
])
def test_unpaired_factors_are_named(names, match):
    with pytest.raises(MpitransError, match=match):
        LoraMerge().pairs(names)


def _planner(tmp_path, maps, dev=(1, 2), shapes=None):
    params = lora_model()
    metas = {0: [TensorMeta(p.name, p.dtype, (shapes or {}).get(p.name, p.shape)) for p in params]}
    layout = with_layout(params, dev, maps)
    path = tmp_path / "dst.ckpt"
    write_strategy_file(path, {n: lay.to_strategy_spec() for n, lay in layout.stages[0]}, stage=0)
    return Planner(None, strategy.load(str(path)), metas, lora=LoraMerge(2.0))


@pytest.mark.parametrize("axis", [0, 1])
def test_each_shard_of_w_gets_the_factor_slices_of_its_box(tmp_path, axis):
    tmap = (0, -1) if axis == 0 else (-1, 0)
    planner = _planner(tmp_path, {"layers.0.wq.weight": tmap, "layers.0.wo.weight": tmap})
    for rank in planner.target_ranks():
        tensors = planner.plan(rank).tensors
        assert not any("lora_" in t.name for t in tensors if t.written)
        assert not any(t.name.startswith("adam_m.") and "lora" in t.name for t in tensors)
        i = next(i for i, t in enumerate(tensors) if t.name == "layers.0.wq.weight")
        b, a, w = tensors[i - 2:i + 1]
        assert (b.role, a.role, w.role, w.lora_scaling) == (ROLE_B, ROLE_A, "", 2.0)
        assert b.name == "layers.0.wq.mindpet_delta_lora_b" and a.name == "layers.0.wq.mindpet_delta_lora_a"
        half = (rank * OUT // 2, (rank + 1) * OUT // 2) if axis == 0 else (rank * IN // 2, (rank + 1) * IN // 2)
        if axis == 0:
            assert w.shape == (OUT // 2, IN) and b.regions[0].src_box == (half, (0, RANK))
            assert box_shape(a.regions[0].src_box) == (RANK, IN)
        else:
            assert w.shape == (OUT, IN // 2) and a.regions[0].src_box == ((0, RANK), half)
            assert box_shape(b.regions[0].src_box) == (OUT, RANK)
        # A weight the destination strategy does not list is copied whole, and merged whole.
        j = next(j for j, t in enumerate(tensors) if t.name == "layers.1.w3.weight")
        assert [t.shape for t in tensors[j - 2:j + 1]] == [(OUT, RANK), (RANK, IN), (OUT, IN)]


def test_factors_that_do_not_fit_w_are_refused_naming_them(tmp_path):
    planner = _planner(tmp_path, {}, dev=(1, 1), shapes={"layers.0.wo.lora_A.weight": (RANK, IN + 1)})
    with pytest.raises(MpitransError, match=r"'layers\.0\.wo\.weight' \[16, 24\].*'layers\.0\.wo\.lora_A\.weight' "
                                            r"\[4, 25\] do not fit"):
        planner.plan(0)


def test_a_weight_copied_as_a_raw_source_shard_is_refused(tmp_path):
    """Only the source strategy splits the weight: MindSpore would copy one shard, there is no W to merge."""
    params = lora_model()
    src_layout = with_layout(params, (1, 2), {"layers.0.wq.weight": (0, -1)})
    files = {}
    for side, drop in (("src", ()), ("dst", ("layers.0.wq.weight",))):
        files[side] = tmp_path / f"{side}.ckpt"
        write_strategy_file(files[side], {n: lay.to_strategy_spec() for n, lay in src_layout.stages[0]
                                          if n not in drop}, stage=0)
    shard = {"layers.0.wq.weight": (OUT // 2, IN)}
    metas = {g: [TensorMeta(p.name, p.dtype, shard.get(p.name, p.shape)) for p in params] for g in (0, 1)}
    planner = Planner(strategy.load(str(files["src"])), strategy.load(str(files["dst"])), metas,
                      lora=LoraMerge())
    with pytest.raises(MpitransError, match=r"'layers\.0\.wq\.weight': the destination strategy does not list it"):
        planner.plan(0)
