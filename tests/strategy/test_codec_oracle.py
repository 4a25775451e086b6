"""The strategy codec against MindSpore's own protobuf classes and JSON reader.

MindSpore forces protobuf's pure-Python runtime when it is imported first (as here), so that runtime's
parse is the reference: what it accepts we read identically, what it refuses we refuse with StrategyError.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpitrans.errors import StrategyError
from mpitrans.fixtures.strategies import strategy_message, write_strategy_file
from mpitrans.strategy.codec import (
    decode_strategy,
    encode_strategy,
    read_strategy,
    write_strategy,
)
from mpitrans.strategy.layout_map import layout_map
from mpitrans.strategy.model import RawLayout, StrategyFile
from tests.strategy.oracle import ms_content, ms_map, our_content, our_map, pb, ps
from tests.strategy.samples import (
    CLASSIC,
    MULTI_AXIS,
    layouts_msg,
    ld,
    map_msg,
    packed,
    random_message,
    random_params,
    tag,
    unpacked,
    varint,
)


def ms_parse(data: bytes) -> pb.ParallelStrategyMap:
    msg = pb.ParallelStrategyMap()
    msg.ParseFromString(data)
    return msg


def compare_with_mindspore(data: bytes) -> None:
    """Either both parsers refuse the bytes, or both read the same content."""
    try:
        expected = ms_content(ms_parse(data))
    except Exception:
        with pytest.raises(StrategyError):
            decode_strategy(data, "fuzz.ckpt")
        return
    try:
        got = decode_strategy(data, "fuzz.ckpt")
    except StrategyError as exc:
        pytest.fail(f"we refuse bytes MindSpore reads: {data.hex()} ({exc})")
    assert our_content(got) == expected, data.hex()


# Unknown fields of every wire type, for hand-made encodings.
UNKNOWN_FIELDS = [
    tag(15, 0) + varint(123456789),
    tag(16, 1) + bytes(8),
    tag(17, 5) + bytes(4),
    ld(18, b"anything at all"),
    tag(19, 3) + tag(1, 0) + varint(5) + tag(2, 3) + ld(3, b"x") + tag(2, 4) + tag(19, 4),  # nested groups
]


# --- reading MindSpore's bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize("params", [CLASSIC, MULTI_AXIS], ids=["classic", "multi-axis"])
def test_reads_mindspore_files(tmp_path, params):
    path = write_strategy_file(tmp_path / "s.ckpt", params, stage=1)
    ours = read_strategy(path)
    assert ours.source == str(path)
    assert our_content(ours) == ms_content(ms_parse(open(path, "rb").read()))
    assert ours.stage == 1
    assert our_map(layout_map(ours)) == ms_map(ps._convert_to_list(ps._build_searched_strategy(str(path))))


@pytest.mark.parametrize("seed", range(150))
def test_random_files_same_content_and_same_bytes(tmp_path, seed):
    rng = random.Random(seed)
    msg = random_message(rng, stages=rng.choice([1, 2, 4]), odd=seed % 3 == 0)
    data = msg.SerializeToString()
    path = tmp_path / "strategy.ckpt"
    path.write_bytes(data)
    ours = read_strategy(path)
    assert our_content(ours) == ms_content(msg)
    assert encode_strategy(ours) == data
    out = tmp_path / "again.ckpt"
    write_strategy(ours, out)
    assert out.read_bytes() == data


def test_packed_and_unpacked_scalars_read_alike():
    a = map_msg([("w", layouts_msg(unpacked([2, 4]), [unpacked([1, 0xFFFFFFFF])]))])
    b = map_msg([("w", layouts_msg(packed([2, 4]), [packed([1, -1])]))])
    mixed = map_msg([("w", layouts_msg(packed([2]) + unpacked([4]), [unpacked([1]) + packed([-1])]))])
    for data in (a, b, mixed):
        compare_with_mindspore(data)
        assert decode_strategy(data).layouts[0][1].tensor_map == ((1, -1),)
        assert decode_strategy(data).layouts[0][1].dev_matrix == (2, 4)


def test_negative_int32_in_five_and_ten_byte_forms():
    five = b"\xff\xff\xff\xff\x0f"  # -1 truncated to 32 bits, as some encoders write it
    body = ld(1, unpacked([8])) + ld(2, tag(1, 0) + five + tag(1, 0) + varint(-1) + tag(1, 0) + varint(-2))
    body += ld(3, b"") + tag(5, 0) + five + tag(6, 0) + varint(-1) + tag(7, 0) + varint(-(1 << 31))
    data = map_msg([("w", body)])
    compare_with_mindspore(data)
    lay = decode_strategy(data).layouts[0][1]
    assert lay.tensor_map == ((-1, -1, -2),)
    assert (lay.field, lay.opt_weight_shard_step, lay.opt_weight_shard_size) == (-1, -1, -(1 << 31))


def test_over_wide_varints_keep_the_low_bits():
    wide = varint((1 << 40) + 6)  # an int32/uint32 field takes the low 32 bits
    data = map_msg([("w", ld(1, tag(1, 0) + wide) + ld(2, b"") + ld(3, b"") + tag(5, 0) + wide)])
    compare_with_mindspore(data)
    assert decode_strategy(data).layouts[0][1].dev_matrix == (6,)


@pytest.mark.parametrize("where", ["top", "item", "layouts", "dims"])
@pytest.mark.parametrize("unknown", UNKNOWN_FIELDS, ids=["varint", "fixed64", "fixed32", "bytes", "group"])
def test_unknown_fields_are_skipped(where, unknown):
    dims = unpacked([2, 4]) + (unknown if where == "dims" else b"")
    body = layouts_msg(dims, [unpacked([1, -1])], unknown if where == "layouts" else b"")
    item = ld(1, b"w") + (unknown if where == "item" else b"") + ld(2, body)
    data = tag(1, 0) + varint(3) + ld(3, item) + (unknown if where == "top" else b"")
    compare_with_mindspore(data)
    s = decode_strategy(data)
    assert s.current_stage == 3 and s.layouts[0][0] == "w" and s.layouts[0][1].dev_matrix == (2, 4)


def test_known_field_with_wrong_wire_type_is_unknown():
    body = layouts_msg(unpacked([2]), [unpacked([0])]) + ld(5, b"\x07") + tag(1, 0) + varint(9)
    data = map_msg([("w", body)], top_extra=ld(1, b"\x05") + tag(3, 0) + varint(1))
    compare_with_mindspore(data)
    assert decode_strategy(data).layouts[0][1].dev_matrix == (2,)


def test_padded_tags_are_unknown_like_in_mindspore():
    padded_field = b"\xa8\x00" + varint(7)  # field 5 varint with a two-byte tag
    data = map_msg([("w", layouts_msg(unpacked([2]), [unpacked([0])], padded_field))])
    compare_with_mindspore(data)
    assert decode_strategy(data).layouts[0][1].field == 0


def test_singular_message_seen_twice_is_merged():
    first = ld(1, unpacked([2])) + tag(5, 0) + varint(1)
    second = ld(2, unpacked([0])) + ld(3, b"") + tag(5, 0) + varint(4)
    item = ld(1, b"w") + ld(2, first) + ld(2, second)
    items = ld(2, ld(1, b"op") + ld(2, tag(1, 0) + varint(3)) + ld(2, ld(2, unpacked([4]))))
    data = tag(1, 0) + varint(0) + items + ld(3, item)
    compare_with_mindspore(data)
    s = decode_strategy(data)
    assert s.layouts[0][1].field == 4 and s.layouts[0][1].tensor_map == ((0,),)
    assert s.strategy_items == [("op", 3, ((4,),))]


def test_odd_message_counts_survive_reading_and_writing():
    body = ld(1, unpacked([2])) + ld(1, unpacked([3])) + ld(2, unpacked([0])) + tag(5, 0) + varint(0)
    body += tag(6, 0) + varint(0) + tag(7, 0) + varint(0)
    data = map_msg([("w", body)])
    s = decode_strategy(data)
    lay = s.layouts[0][1]
    assert lay.dev_matrix_messages() == ((2,), (3,)) and lay.param_split_shape_messages() == ()
    assert encode_strategy(s) == ms_parse(data).SerializeToString()


def test_every_truncation_is_refused_or_read_like_mindspore(tmp_path):
    data = strategy_message({**CLASSIC, **MULTI_AXIS}, stage=2).SerializeToString()
    for n in range(len(data)):
        compare_with_mindspore(data[:n])


def test_invalid_utf8_name_is_refused():
    data = map_msg([("w", layouts_msg(unpacked([2]), [b""]))]).replace(b"\x0a\x01w", b"\x0a\x01\xff")
    with pytest.raises(Exception):  # noqa: B017 - any MindSpore failure will do
        ms_parse(data)
    with pytest.raises(StrategyError, match="UTF-8"):
        decode_strategy(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data):
    compare_with_mindspore(data)


_VALID = strategy_message({**CLASSIC, **MULTI_AXIS}, stage=1).SerializeToString()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255), st.sampled_from("rid")),
                min_size=1, max_size=4))
def test_fuzz_mutated_valid_file(edits):
    data = bytearray(_VALID)
    for pos, value, op in edits:
        pos = min(pos, len(data) - 1)
        if op == "r":
            data[pos] = value
        elif op == "i":
            data.insert(pos, value)
        elif len(data) > 1:
            del data[pos]
    compare_with_mindspore(bytes(data))


# --- file-level errors ------------------------------------------------------------------------------------


def test_format_follows_the_name_like_mindspore(tmp_path):
    data = strategy_message(CLASSIC).SerializeToString()
    for name in ("s.JSON", "s.txt", "strategy"):
        (tmp_path / name).write_bytes(data)
        assert our_content(read_strategy(tmp_path / name)) == ms_content(ms_parse(data))
    (tmp_path / "s.json").write_bytes(data)
    with pytest.raises(StrategyError, match="s.json is not valid JSON"):
        read_strategy(tmp_path / "s.json")


# --- JSON -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_json_files_read_like_mindspore(tmp_path, seed):
    rng = random.Random(seed)
    params = random_params(rng, rng.randint(1, 6), multi_axis=False)
    for spec in params.values():
        spec.pop("raw_tensor_maps", None)
    path = str(write_strategy_file(tmp_path / "s.json", params, stage=seed % 3, fmt="json"))
    ours = read_strategy(path)
    assert ours.stage == seed % 3
    expected = ps._build_searched_strategy(path)
    assert [n for n, _ in ours.layouts] == list(expected)
    for (_name, lay), msg in zip(ours.layouts, expected.values(), strict=True):
        assert lay.tensor_map == tuple(tuple(m.dim) for m in msg.tensor_map)
        assert lay.param_split_shape_messages() == tuple(tuple(m.dim) for m in msg.param_split_shape)
        assert lay.indices_offset_messages() == tuple(tuple(m.dim) for m in msg.indices_offset)
        assert lay.dev_matrix_messages() == tuple(tuple(m.dim) for m in msg.dev_matrix)
        assert (lay.field, lay.opt_weight_shard_step, lay.opt_weight_shard_size) == (
            msg.field, msg.opt_weight_shard_step, msg.opt_weight_shard_size)
    assert our_map(layout_map(ours)) == ms_map(ps._convert_to_list(expected))


GOOD_ITEM = {"dev_matrix": [2, 4], "tensor_map": [1, -1], "field": 0, "opt_weight_shard_step": 0,
             "opt_weight_shard_size": 0}


def _doc(**changes):
    item = {**GOOD_ITEM, **changes}
    for k in [k for k, v in item.items() if v is ...]:
        del item[k]
    return {"current_stage": 0, "parallel_strategy_item": {"op": {"stage": 0, "parallel_strategy": [[2, 4]]}},
            "parallel_layout_item": {"w": item}}


BAD_JSON = {
    "not-json": b"{not json",
    "bom": b"\xef\xbb\xbf" + json.dumps(_doc()).encode(),
    "bad-utf8": b'{"parallel_layout_item": {"\xff": 1}}',
    "missing-field": json.dumps(_doc(field=...)).encode(),
    "missing-dev-matrix": json.dumps(_doc(dev_matrix=...)).encode(),
    "null-step": json.dumps(_doc(opt_weight_shard_step=None)).encode(),
    "float-size": json.dumps(_doc(opt_weight_shard_size=2.0)).encode(),
    "string-field": json.dumps(_doc(field="0")).encode(),
    "bool-field": json.dumps(_doc(field=True)).encode(),
    "negative-dev": json.dumps(_doc(dev_matrix=[-2, 4])).encode(),
    "int32-overflow": json.dumps(_doc(tensor_map=[1 << 31])).encode(),
    "nested-tensor-map": json.dumps(_doc(tensor_map=[[1, 0], -1])).encode(),
    "split-shape-not-list": json.dumps(_doc(param_split_shape=5)).encode(),
    "item-not-object": json.dumps({"parallel_layout_item": {"w": [1]}}).encode(),
}
NOT_A_STRATEGY = {
    # MindSpore silently reads these as "no layouts"; we say what is wrong instead.
    "no-layout-key": json.dumps({"current_stage": 0}).encode(),
    "empty-layouts": json.dumps({"parallel_layout_item": {}}).encode(),
    "empty-object": b"{}",
    "list": b"[1, 2]",
}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_bad_json_is_refused_like_mindspore(tmp_path, case):
    path = tmp_path / f"{case}.json"
    path.write_bytes(BAD_JSON[case])
    with pytest.raises(Exception):  # noqa: B017 - any MindSpore failure will do
        ps._convert_to_list(ps._build_searched_strategy(str(path)))
    with pytest.raises(StrategyError, match=f"{case}.json"):
        read_strategy(path)


@pytest.mark.parametrize("case", sorted(NOT_A_STRATEGY))
def test_json_without_layouts_is_refused(tmp_path, case):
    path = tmp_path / f"{case}.json"
    path.write_bytes(NOT_A_STRATEGY[case])
    assert ps._build_searched_strategy(str(path)) == {}
    with pytest.raises(StrategyError, match=f"{case}.json"):
        read_strategy(path)


def test_json_quirks_mindspore_accepts(tmp_path):
    # Extra keys such as tensor_shape are ignored; param_split_shape without indices_offset is fine.
    path = tmp_path / "q.json"
    path.write_text(json.dumps(_doc(field=7, tensor_shape=[8, 8], param_split_shape=[2, 2])))
    ours = read_strategy(path)
    assert ours.layouts[0][1].field == 7 and ours.layouts[0][1].param_split_shape == (2, 2)
    assert our_map(layout_map(ours)) == ms_map(ps._convert_to_list(ps._build_searched_strategy(str(path))))


def test_write_json_is_read_back_by_mindspore(tmp_path):
    s = read_strategy(write_strategy_file(tmp_path / "s.ckpt", CLASSIC, stage=3))
    out = tmp_path / "out.json"
    write_strategy(s, out)
    assert our_map(layout_map(s)) == ms_map(ps._convert_to_list(ps._build_searched_strategy(str(out))))
    assert read_strategy(out).strategy_items == s.strategy_items


# --- writing and broadcasting -----------------------------------------------------------------------------


def test_written_protobuf_equals_mindspore_serialization(tmp_path):
    s = StrategyFile(
        layouts=[("b", RawLayout((2, 4), ((1, 0), ()), field=-1, opt_weight_shard_step=-1,
                                 opt_weight_shard_size=-1)),
                 ("a", RawLayout((8,), ((0, -1),), param_split_shape=(4, 4), indices_offset=(0, 4)))],
        strategy_items=[("op1", 2, ((2, 4), (4,))), ("op2", 2, ())],
        current_stage=5,
    )
    out = tmp_path / "s.ckpt"
    write_strategy(s, out)
    msg = ms_parse(out.read_bytes())
    assert our_content(s) == ms_content(msg)
    assert out.read_bytes() == msg.SerializeToString()


