"""The oracle checks itself: its files are right, its cache works, and MindSpore still behaves the way
`tests/support/oracle.py` documents (if a MindSpore upgrade changes a quirk, a test here says which).

The data checks compare MindSpore's outputs with a naive, independent reading of the layouts (a rank's
slice is given by its device-matrix coordinates; optimizer sharding cuts the first dimension among the
replica group in rank order), so a wrong oracle cannot pass by agreeing with itself.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from math import prod
from pathlib import Path

import numpy as np
import pytest

from mpitrans.fixtures.layouts import LayoutEntry, opt_shard_transformable
from tests.support import oracle
from tests.support.layouts import (
    DTYPES,
    EXTRA_NAMES,
    Case,
    LayoutSpec,
    ParamSpec,
    catalog,
    dp_mp,
    mindspore_misplaces,
    random_case,
    rejected_catalog,
)
from tests.support.oracle import CaseFiles, Record, assert_same_tree, build_case, build_cases, read_checkpoint

needs_ms = pytest.mark.skipif(importlib.util.find_spec("mindspore") is None, reason="needs mindspore")

ITEMSIZE = {"Float32": 4, "Float16": 2, "BFloat16": 2, "Int32": 4, "Int8": 1, "Int64": 8, "Float64": 8,
            "Bool": 1, "UInt8": 1}
MS_DTYPE = {"float32": "Float32", "float16": "Float16", "bfloat16": "BFloat16", "int32": "Int32",
            "int8": "Int8", "int64": "Int64", "float64": "Float64", "bool": "Bool", "uint8": "UInt8"}
# Catalog cases whose outputs deliberately differ from the naive reading (see the oracle docstring).
NOT_NAIVE = {"opt_swapped_axes", "src_strategy_lacks_param", "dst_strategy_lacks_param"}
N_RANDOM = 12


@pytest.fixture(scope="module")
def built() -> dict[str, CaseFiles]:
    """Every catalog case, every rejected one and a few random ones, built once (then cached)."""
    cases = list(catalog().values()) + [c for c, _ in rejected_catalog().values()]
    cases += [random_case(s) for s in range(N_RANDOM)]
    return {c.label: f for c, f in zip(cases, build_cases(cases), strict=True)}


def accepted(built: dict[str, CaseFiles]) -> list[CaseFiles]:
    rejected = set(rejected_catalog())
    return [f for label, f in built.items() if label not in rejected]


# ---------------------------------------------------------------------------------------------------
# The naive reading of a layout, on raw bytes (no MindSpore, no dtype conversion).


def raw(rec: Record) -> np.ndarray:
    return np.frombuffer(rec.data, dtype=f"V{ITEMSIZE[rec.dtype]}").reshape(rec.dims)


def coords(rank: int, dev_matrix: tuple[int, ...]) -> list[int]:
    out = []
    for s in reversed(dev_matrix):
        out.append(rank % s)
        rank //= s
    return out[::-1]


def naive_slice(full: np.ndarray, lay: LayoutEntry, rank: int) -> np.ndarray:
    dm = lay.dev_matrix
    c = coords(rank, dm)
    box = []
    for d, e in enumerate(lay.tensor_map):
        pos, n = 0, 1
        for a in [a for a in (e if isinstance(e, tuple) else (e,)) if a != -1]:
            size = dm[len(dm) - 1 - a]
            pos, n = pos * size + c[len(dm) - 1 - a], n * size
        step = full.shape[d] // n
        box.append((pos * step, (pos + 1) * step))
    k = lay.resolved_opt_size()
    if lay.opt_shard_size and k > 1:
        used = {len(dm) - 1 - a for a in lay.used_axes()}
        group = [r for r in range(prod(dm)) if all(coords(r, dm)[i] == c[i] for i in used)]
        j = group.index(rank) % k
        lo, hi = box[0]
        step = (hi - lo) // k
        box[0] = (lo + j * step, lo + (j + 1) * step)
    return full[tuple(slice(lo, hi) for lo, hi in box)]


def out_rank(rel: str) -> int:
    return int(rel.split("/")[0].removeprefix("rank_"))


def target_layouts(case: Case, rank: int) -> dict[str, LayoutEntry] | None:
    if case.dst is None:
        return None
    return case.dst.stage_layouts(rank // case.dst.stage_device_num) if case.src_stage is None \
        else case.dst.stage_layouts(0)


def source_files(f: CaseFiles) -> dict[int, Path]:
    return {int(d.name.removeprefix("rank_")): sorted(d.glob("*.ckpt"))[-1] for d in f.src_dir.glob("rank_*")}


def loaded_ranks(f: CaseFiles, rank: int) -> list[int]:
    """Source ranks MindSpore loads for an output, in load order."""
    c = f.case
    if c.src_stage is not None:
        m = c.src.stage_device_num
        return [c.src_stage * m + i for i in range(m)]
    return f.rank_lists[rank]  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------
# Generation.


def test_random_case_is_deterministic() -> None:
    for seed in range(50):
        a, b = random_case(seed), random_case(seed)
        assert a == b and a.digest() == b.digest() and a.to_json() == b.to_json()
    assert len({random_case(s).digest() for s in range(50)}) == 50


def test_case_json_round_trip() -> None:
    for case in [*catalog().values(), *(random_case(s) for s in range(50))]:
        assert Case.from_json(json.loads(json.dumps(case.to_json()))) == case


def test_random_cases_stay_within_what_mindspore_accepts() -> None:
    """Every rule random_case must respect (Case.__post_init__ already checked shapes and tensor maps)."""
    kinds = set()
    for seed in range(400):
        c = random_case(seed)
        assert c.src is not None or c.dst is not None
        if c.src is not None and c.dst is not None:
            a, b = c.src.stage_device_num, c.dst.stage_device_num
            assert max(a, b) % min(a, b) == 0
            assert c.dst.num_stages == 1 or b > 1
        for side in (c.src, c.dst):
            for st in side.stages if side else ():
                for _, lay in st:
                    assert opt_shard_transformable(lay.dev_matrix, lay.tensor_map, lay.opt_shard_step,
                                                   lay.opt_shard_size)
                    assert not (c.fmt == "json" and lay.multi_axis)
                    kinds.add("opt" if lay.opt_shard_size else "multi" if lay.multi_axis else "plain")
        kinds.add("pp" if any(s and s.num_stages > 1 for s in (c.src, c.dst)) else "flat")
        kinds.add("part" if c.src_stage is not None else "whole")
        kinds |= {p.dtype for p in c.params}
    assert kinds >= {"opt", "multi", "plain", "pp", "flat", "part", *DTYPES}


# ---------------------------------------------------------------------------------------------------
# The harness itself.


@needs_ms
def test_full_checkpoint_holds_the_specs(built: dict[str, CaseFiles]) -> None:
    f = built["dtypes_full_to_dp2mp2"]
    recs = read_checkpoint(f.full_dir / "rank_0" / "full.ckpt")
    want = [(p.name, MS_DTYPE[p.dtype], p.shape) for p in f.case.params]
    assert [(r.name, r.dtype, r.dims) for r in recs] == want
    assert all(len(r.data) == ITEMSIZE[r.dtype] * prod(r.dims) for r in recs)


@needs_ms
@pytest.mark.parametrize("label", ["dp2mp2_to_full", "dtypes_opt_dp2mp2_to_full", "opt_dp4mp2_to_full",
                                   "multi_axis_opt_to_full", "pp2_to_full"])
def test_round_trip_through_mindspore_reproduces_the_full_tensors(built: dict[str, CaseFiles],
                                                                  label: str) -> None:
    """full -> layout -> full gives back every tensor bit for bit (bf16 included, though MindSpore
    converts it through float32), with the strategy-less parameters moved to the end."""
    f = built[label]
    full = read_checkpoint(f.full_dir / "rank_0" / "full.ckpt")
    back = read_checkpoint(f.expected_dir / "rank_0" / "checkpoint_0.ckpt")
    assert sorted(back, key=lambda r: r.name) == sorted(full, key=lambda r: r.name)
    extras = oracle.extras_of(f.case)
    assert extras and [r.name for r in back][-len(extras):] == [r.name for r in full if r.name in extras]


@needs_ms
def test_cache_hit_builds_nothing(built: dict[str, CaseFiles], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_workers(*_a: object, **_k: object) -> None:
        raise AssertionError("a cached case was rebuilt")

    monkeypatch.setattr(oracle, "_run_workers", no_workers)
    again = build_cases([random_case(0), catalog()["pp2_to_full"]])
    assert again[0].root == built["random0"].root and again[1].root == built["pp2_to_full"].root


def test_racing_builders_keep_one_entry(tmp_path: Path) -> None:
    """Two processes finishing the same case: the first rename wins, the loser cleans up quietly."""
    final = tmp_path / "key"
    for who in ("first", "second"):
        tmp = tmp_path / f".tmp-key-{who}"
        tmp.mkdir()
        (tmp / "meta.json").write_text(who)
        oracle._finalize(tmp, final)
        assert not tmp.exists()
    assert (final / "meta.json").read_text() == "first"


@needs_ms
def test_workdir_copy_is_private_and_writable(built: dict[str, CaseFiles], tmp_path: Path) -> None:
    f = build_case(catalog()["dp2mp2_to_dp1mp4"], tmp_path / "copy")
    assert f.root == tmp_path / "copy" and f.expected_files == built["dp2mp2_to_dp1mp4"].expected_files
    target = f.src_dir / "rank_0" / "checkpoint_0.ckpt"
    target.write_bytes(target.read_bytes())
    assert_same_tree(built["dp2mp2_to_dp1mp4"].expected_dir, f.expected_dir)


@needs_ms
def test_assert_same_tree_names_the_difference(built: dict[str, CaseFiles], tmp_path: Path) -> None:
    f = built["dp2mp2_to_dp1mp4"]
    act = tmp_path / "act"
    shutil.copytree(f.expected_dir, act, copy_function=shutil.copyfile)
    assert_same_tree(f.expected_dir, act)
    victim = act / "rank_1" / "checkpoint_1.ckpt"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1  # last byte of the last record's data
    victim.write_bytes(bytes(data))
    last = read_checkpoint(victim)[-1].name
    with pytest.raises(AssertionError, match=rf"rank_1/checkpoint_1.ckpt: {last} .*data differs"):
        assert_same_tree(f.expected_dir, act)
    (act / "rank_2" / "checkpoint_2.ckpt").unlink()
    (act / "rank_2" / "extra.ckpt").write_bytes(b"")
    with pytest.raises(AssertionError, match=r"missing files: \['rank_2/checkpoint_2.ckpt'\]"):
        assert_same_tree(f.expected_dir, act)


# ---------------------------------------------------------------------------------------------------
# MindSpore behaves as documented.


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    return _encode_varint(num << 3 | 2) + _encode_varint(len(payload)) + payload


def encode(rec: Record) -> bytes:
    """One record the way MindSpore's save_checkpoint frames it: a whole `Checkpoint` message per record;
    in its TensorProto one unpacked varint field per dim (none for a 0-d tensor; checkpoint.proto is
    proto2), then the dtype name, then the raw bytes."""
    dims = b"".join(b"\x08" + _encode_varint(d) for d in rec.dims)
    tensor = dims + _field(2, rec.dtype.encode()) + _field(3, rec.data)
    return _field(1, _field(1, rec.name.encode()) + _field(2, tensor))


@needs_ms
def test_outputs_are_nothing_but_records(built: dict[str, CaseFiles]) -> None:
    for f in accepted(built):
        for rel in f.expected_files:
            path = f.expected_dir / rel
            assert b"".join(encode(r) for r in read_checkpoint(path)) == path.read_bytes(), rel
            assert path.stat().st_mode & 0o777 == 0o400


@needs_ms
def test_output_file_names(built: dict[str, CaseFiles]) -> None:
    for f in accepted(built):
        c = f.case
        if c.src_stage is not None:
            want = [f"rank_{r}/checkpoint_{r}_part{c.src_stage}.ckpt" for r in range(c.dst.stage_device_num)]
        elif c.label == "src_strategy_lacks_param":  # a plain src strategy with fewer names takes it too
            want = [f"rank_{r}/checkpoint_{r}_part0.ckpt" for r in range(c.dst.device_num)]
        else:
            want = [f"rank_{r}/checkpoint_{r}.ckpt" for r in range(c.dst.device_num if c.dst else 1)]
        assert sorted(f.expected_files) == sorted(want), c.label


@needs_ms
def test_rejected_layouts(built: dict[str, CaseFiles]) -> None:
    for label, (_, message) in rejected_catalog().items():
        f = built[label]
        assert f.error is not None and message in f.error, (label, f.error)
        assert f.expected_files == ()


@needs_ms
def test_rank_lists_are_descending_and_name_what_is_loaded(built: dict[str, CaseFiles]) -> None:
    for f in accepted(built):
        for rank, ranks in f.rank_lists.items():
            assert isinstance(ranks, list), (f.case.label, rank, ranks)
            assert ranks == sorted(set(ranks), reverse=True)
        if f.case.src is None:
            assert all(v == [0] for v in f.rank_lists.values())


@needs_ms
def test_data_matches_the_naive_reading(built: dict[str, CaseFiles]) -> None:
    for f in accepted(built):
        c = f.case
        if c.label in NOT_NAIVE:
            continue
        full = {r.name: raw(r) for r in read_checkpoint(f.full_dir / "rank_0" / "full.ckpt")}
        for rel in f.expected_files:
            rank = out_rank(rel)
            lays = target_layouts(c, rank)
            for rec in read_checkpoint(f.expected_dir / rel):
                if rec.name in oracle.extras_of(c) or (lays and mindspore_misplaces(lays[rec.name])):
                    continue
                want = full[rec.name] if lays is None else naive_slice(full[rec.name], lays[rec.name],
                                                                       rank % c.dst.stage_device_num)
                got = raw(rec)
                assert got.shape == want.shape and got.tobytes() == want.tobytes(), (c.label, rel, rec.name)


@needs_ms
def test_mindspore_misplaces_opt_sharded_swapped_axes(built: dict[str, CaseFiles]) -> None:
    """The one layout family where MindSpore's transformer disagrees with the layout's meaning."""
    f = built["opt_swapped_axes"]
    lay = f.case.dst.stage_layouts(0)["layer0.weight"]
    assert mindspore_misplaces(lay)
    full = {r.name: raw(r) for r in read_checkpoint(f.full_dir / "rank_0" / "full.ckpt")}["layer0.weight"]
    wrong = []
    for rel in f.expected_files:
        got = {r.name: raw(r) for r in read_checkpoint(f.expected_dir / rel)}["layer0.weight"]
        if got.tobytes() != naive_slice(full, lay, out_rank(rel)).tobytes():
            wrong.append(rel)
    assert 0 < len(wrong) < len(f.expected_files)


@needs_ms
def test_parameter_order(built: dict[str, CaseFiles]) -> None:
    """Names in first-seen order over the loaded source files (in load order); those transformed
    (named by both strategies, or the one given) first, the rest (strategy-less extras, names only one
    strategy knows) after; names of other target stages dropped."""
    for f in accepted(built):
        c = f.case
        src = source_files(f)
        for rel in f.expected_files:
            rank = out_rank(rel)
            seen: list[str] = []
            for g in loaded_ranks(f, rank):
                seen += [r.name for r in read_checkpoint(src[g]) if r.name not in seen]
            if c.src is None:
                src_names = None
            else:
                src_names = c.src.names() if c.src_stage is None else set(c.src.stage_layouts(c.src_stage))
            lays = target_layouts(c, rank)
            moved = [n for n in seen if (src_names is None or n in src_names) and (lays is None or n in lays)]
            dropped = set() if c.dst is None or c.src_stage is not None else c.dst.names() - set(lays)
            rest = [n for n in seen if n not in moved and n not in dropped]
            assert [r.name for r in read_checkpoint(f.expected_dir / rel)] == moved + rest, (c.label, rel)


@needs_ms
def test_strategy_less_parameters_come_from_one_rank(built: dict[str, CaseFiles]) -> None:
    """With `distinct_extras` every source rank holds its own copy: MindSpore takes the one of the
    lowest-numbered loaded rank g with g % M == target_local % M (M source devices per stage); on the
    single-stage path, rank stage * M + target_local % M."""
    checked = 0
    for f in accepted(built):
        c = f.case
        if not c.distinct_extras or c.src is None:
            continue
        m = c.src.stage_device_num
        src = {g: {r.name: r.data for r in read_checkpoint(p)} for g, p in source_files(f).items()}
        for rel in f.expected_files:
            local = out_rank(rel) % (c.dst.stage_device_num if c.dst else 1)
            if c.src_stage is not None:
                want = c.src_stage * m + local % m
            else:
                want = min(g for g in loaded_ranks(f, out_rank(rel)) if g % m == local % m)
            for rec in read_checkpoint(f.expected_dir / rel):
                if rec.name in EXTRA_NAMES or rec.name not in c.src.names():
                    holders = [g for g, d in src.items() if d.get(rec.name) == rec.data]
                    assert holders == [want], (c.label, rel, rec.name, holders, want)
                    checked += 1
    assert checked


@needs_ms
def test_quirky_strategies(built: dict[str, CaseFiles]) -> None:
    """A name the target strategy lacks is copied as the raw source shard; a name the source strategy
    lacks is copied whole (and sends MindSpore down its single-stage `_part0` path)."""
    f = built["dst_strategy_lacks_param"]
    src0 = {r.name: r for r in read_checkpoint(source_files(f)[0])}
    out0 = {r.name: r for r in read_checkpoint(f.expected_dir / "rank_0" / "checkpoint_0.ckpt")}
    assert out0["layer0.bias"] == src0["layer0.bias"] and out0["layer0.bias"].dims == (12,)
    f = built["src_strategy_lacks_param"]
    out0 = {r.name: r for r in read_checkpoint(f.expected_dir / "rank_0" / "checkpoint_0_part0.ckpt")}
    assert out0["layer0.bias"].dims == (24,)


@needs_ms
def test_by_rank_matches_transform_checkpoints(built: dict[str, CaseFiles]) -> None:
    for f in accepted(built):
        if f.case.src_stage is not None or f.case.label.endswith("lacks_param"):
            continue
        assert not f.by_rank_errors, f.case.label
        assert_same_tree(f.expected_dir, f.by_rank_dir)


@needs_ms
def test_random_cases_are_accepted(built: dict[str, CaseFiles]) -> None:
    for s in range(N_RANDOM):
        assert built[f"random{s}"].error is None, built[f"random{s}"].error


def test_layout_helpers() -> None:
    params = (ParamSpec("w", (8, 4)), ParamSpec("adam_m.w", (8, 4)), ParamSpec("global_step", (1,), "int32"))
    lay = dp_mp(2, 2, params, opt_shard=True)
    assert lay.names() == {"w", "adam_m.w"} and lay.stage_device_num == 4
    w = lay.stage_layouts(0)["w"]
    assert w == LayoutEntry((2, 2), (0, -1), 2, -1) == lay.stage_layouts(0)["adam_m.w"]
    with pytest.raises(ValueError):
        LayoutSpec.single({"w": LayoutEntry((2, 2), (0, -1)), "v": LayoutEntry((8,), (0,))})
    with pytest.raises(ValueError):
        ParamSpec("a-b", (1,))
    assert opt_shard_transformable((3, 2), (-1, 0), 2, 3)
    assert not opt_shard_transformable((2, 3, 1), (-1, -1), 1, 2)  # MindSpore can't take 2 out of 3
