"""Reading and writing MindSpore parallel strategy files without MindSpore or the protobuf package.

A strategy file is either a protobuf `ParallelStrategyMap` (MindSpore's `node_strategy.proto`, proto2) or a
JSON document with the same content. MindSpore decides the format by name alone: a path ending in ``.json``
is JSON, anything else is protobuf; we follow the same rule so the same paths mean the same thing.

The protobuf side is a small wire-format decoder written for this one schema. Strategy files come from
users' disks (and may be truncated copies, or not strategy files at all), so every length is checked
against the bytes that are really there, unknown fields are skipped the way protobuf skips them, and any
malformation surfaces as a `StrategyError` naming the file instead of an IndexError deep inside a loop.

The encoder writes fields in field-number order with repeated scalars unpacked, proto2's default, so the
bytes equal what MindSpore's own `ParallelStrategyMap.SerializeToString()` produces for the same content;
a merged file written by us is then indistinguishable from one MindSpore merged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from mpitrans.errors import StrategyError
from mpitrans.storage import wire
from mpitrans.storage.wire import WireError
from mpitrans.strategy.model import RawLayout, StrategyFile

__all__ = [
    "decode_strategy",
    "encode_strategy",
    "is_json_path",
    "parse_strategy_bytes",
    "read_strategy",
    "read_strategy_bytes",
    "strategy_from_bytes",
    "strategy_to_bytes",
    "strategy_to_json",
    "write_strategy",
]

_VARINT, _LEN = wire.VARINT, wire.LENGTH_DELIMITED
_as_int32, _as_uint32, _as_int64 = wire.as_int32, wire.as_uint32, wire.to_int64

_U32 = (0, (1 << 32) - 1)
_I32 = (-(1 << 31), (1 << 31) - 1)
_I64 = (-(1 << 63), (1 << 63) - 1)


def is_json_path(path: str) -> bool:
    """MindSpore's format rule: only the last five characters matter, case-sensitively."""
    return os.fspath(path)[-5:] == ".json"


# ---------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------


_MINUS_ONE = b"\x08" + b"\xff" * 9 + b"\x01"


def _repeated_dims(buf: bytes, pos: int, end: int, convert) -> tuple[int, ...]:
    """Field 1 of DevMatrix/TensorMap/...: a repeated varint scalar, packed or not (both are legal)."""
    out: list[int] = []
    # Fast path for what MindSpore writes: unpacked elements, each a 0x08 tag and a one-byte value (every
    # conversion leaves 0..127 unchanged). Anything else goes to the general loop from where it starts.
    while pos + 1 < end and buf[pos] == 0x08:
        if buf[pos + 1] < 0x80:
            out.append(buf[pos + 1])
            pos += 2
        elif buf.startswith(_MINUS_ONE, pos, end):  # -1, "not split", is the other common value
            out.append(convert(0xFFFFFFFFFFFFFFFF))
            pos += len(_MINUS_ONE)
        else:
            break
    if pos >= end:
        return tuple(out)
    for num, wt, a, b in wire.iter_fields(buf, pos, end):
        if num != 1:
            continue
        if wt == _VARINT:
            out.append(convert(a))
        elif wt == _LEN:
            p = a
            while p < b:
                v, p = wire.decode_varint_wrapping(buf, p, b)
                out.append(convert(v))
    return tuple(out)


def _utf8(buf: bytes, a: int, b: int, what: str) -> str:
    try:
        return buf[a:b].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"{what} is not valid UTF-8", a) from exc


class _LayoutAcc:
    """Mutable ParallelLayouts being decoded; a singular message seen twice on the wire is merged."""

    __slots__ = ("dev", "tmap", "pss", "io", "field", "step", "size")

    def __init__(self) -> None:
        self.dev: list[tuple[int, ...]] = []
        self.tmap: list[tuple[int, ...]] = []
        self.pss: list[tuple[int, ...]] = []
        self.io: list[tuple[int, ...]] = []
        self.field = self.step = self.size = 0

    def merge(self, buf: bytes, pos: int, end: int) -> None:
        for num, wt, a, b in wire.iter_fields(buf, pos, end):
            if wt == _LEN:
                if num == 1:
                    self.dev.append(_repeated_dims(buf, a, b, _as_uint32))
                elif num == 2:
                    self.tmap.append(_repeated_dims(buf, a, b, _as_int32))
                elif num == 3:
                    self.pss.append(_repeated_dims(buf, a, b, _as_int64))
                elif num == 4:
                    self.io.append(_repeated_dims(buf, a, b, _as_int64))
            elif wt == _VARINT:
                if num == 5:
                    self.field = _as_int32(a)
                elif num == 6:
                    self.step = _as_int32(a)
                elif num == 7:
                    self.size = _as_int32(a)

    def build(self) -> RawLayout:
        return _raw_layout(self.dev, self.tmap, self.pss, self.io, self.field, self.step, self.size)


def _raw_layout(
    dev: Sequence[tuple[int, ...]],
    tmap: Sequence[tuple[int, ...]],
    pss: Sequence[tuple[int, ...]],
    io: Sequence[tuple[int, ...]],
    field: int,
    step: int,
    size: int,
) -> RawLayout:
    """RawLayout from message lists, using the compact form whenever a list holds exactly one message."""

    def split(msgs: Sequence[tuple[int, ...]]) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...] | None]:
        if len(msgs) == 1:
            return msgs[0], None
        return (msgs[0] if msgs else ()), tuple(msgs)

    d, d_all = split(dev)
    p, p_all = split(pss)
    i, i_all = split(io)
    return RawLayout(
        dev_matrix=d,
        tensor_map=tuple(tmap),
        param_split_shape=p,
        indices_offset=i,
        field=field,
        opt_weight_shard_step=step,
        opt_weight_shard_size=size,
        all_dev_matrices=d_all,
        all_param_split_shapes=p_all,
        all_indices_offsets=i_all,
    )


def _named_item(buf: bytes, pos: int, end: int, what: str) -> tuple[str, list[tuple[int, int]]]:
    """A map entry of the strategy file: its name (field 1) and the byte ranges of its value (field 2)."""
    name = ""
    values: list[tuple[int, int]] = []
    for num, wt, a, b in wire.iter_fields(buf, pos, end):
        if wt != _LEN:
            continue
        if num == 1:
            name = _utf8(buf, a, b, what)
        elif num == 2:
            values.append((a, b))
    return name, values


def _decode_layout_item(buf: bytes, pos: int, end: int) -> tuple[str, RawLayout]:
    name, values = _named_item(buf, pos, end, "a parameter name")
    acc = _LayoutAcc()
    for a, b in values:
        acc.merge(buf, a, b)
    return name, acc.build()


def _decode_strategy_item(buf: bytes, pos: int, end: int) -> tuple[str, int, tuple[tuple[int, ...], ...]]:
    name, values = _named_item(buf, pos, end, "a node name")
    stage = 0
    dims: list[tuple[int, ...]] = []
    for p, e in values:
        for num, wt, a, b in wire.iter_fields(buf, p, e):
            if num == 1 and wt == _VARINT:
                stage = _as_uint32(a)
            elif num == 2 and wt == _LEN:
                dims.append(_repeated_dims(buf, a, b, _as_uint32))
    return name, stage, tuple(dims)


def _decode(buf: bytes) -> StrategyFile:
    out = StrategyFile()
    for num, wt, a, b in wire.iter_fields(buf, 0, len(buf)):
        if num == 1 and wt == _VARINT:
            out.current_stage = _as_uint32(a)
        elif num == 2 and wt == _LEN:
            out.strategy_items.append(_decode_strategy_item(buf, a, b))
        elif num == 3 and wt == _LEN:
            out.layouts.append(_decode_layout_item(buf, a, b))
    return out


def decode_strategy(data: bytes, source: str = "<bytes>") -> StrategyFile:
    """Parse protobuf bytes of a `ParallelStrategyMap`; malformed bytes raise StrategyError naming `source`.

    A well-formed message without any parameter layout is returned as is; `read_strategy` is the place
    that refuses such a file, because merging and broadcasting need the raw content.
    """
    try:
        strategy = _decode(bytes(data))
    except WireError as exc:
        raise StrategyError(
            f"strategy file {source} is not a valid protobuf strategy ({exc}); MindSpore reads every file "
            f"whose name does not end in '.json' as protobuf"
        ) from None
    strategy.source = source
    return strategy


# ---------------------------------------------------------------------------------------------------------
# Wire-format encoding
# ---------------------------------------------------------------------------------------------------------


def _check(v: int, bounds: tuple[int, int], what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not bounds[0] <= v <= bounds[1]:
        raise StrategyError(f"{what} value {v!r} does not fit the strategy file's field type")
    return v


def _dims(values: Sequence[int], bounds: tuple[int, int], what: str) -> bytes:
    # proto2 repeated scalars without [packed=true]: one tag per element, as MindSpore serializes them.
    out = bytearray()
    for v in values:
        if type(v) is int and 0 <= v < 0x80:  # fits every field type and is its own varint
            out += b"\x08"
            out.append(v)
        else:
            out += b"\x08" + wire.encode_varint64(_check(v, bounds, what))
    return bytes(out)


def _text(value: str, what: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise StrategyError(f"{what} {value!r} is not valid UTF-8 and cannot be stored in a strategy "
                            f"file") from None


def _len_field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + wire.encode_varint64(len(payload)) + payload


def _encode_layout(layout: RawLayout) -> bytes:
    parts = [_len_field(0x0A, _dims(m, _U32, "dev_matrix")) for m in layout.dev_matrix_messages()]
    parts += [_len_field(0x12, _dims(m, _I32, "tensor_map")) for m in layout.tensor_map]
    parts += [_len_field(0x1A, _dims(m, _I64, "param_split_shape"))
              for m in layout.param_split_shape_messages()]
    parts += [_len_field(0x22, _dims(m, _I64, "indices_offset"))
              for m in layout.indices_offset_messages()]
    parts.append(b"\x28" + wire.encode_varint64(_check(layout.field, _I32, "field")))
    parts.append(b"\x30" + wire.encode_varint64(_check(layout.opt_weight_shard_step, _I32, "opt_weight_shard_step")))
    parts.append(b"\x38" + wire.encode_varint64(_check(layout.opt_weight_shard_size, _I32, "opt_weight_shard_size")))
    return b"".join(parts)


def encode_strategy(strategy: StrategyFile) -> bytes:
    """Serialize to protobuf bytes equal to MindSpore's `SerializeToString()` of the same content."""
    parts = [b"\x08" + wire.encode_varint64(_check(strategy.current_stage, _U32, "current_stage"))]
    for node, stage, dims in strategy.strategy_items:
        inner = b"\x08" + wire.encode_varint64(_check(stage, _U32, "stage"))
        inner += b"".join(_len_field(0x12, _dims(d, _U32, "parallel_strategy")) for d in dims)
        parts.append(_len_field(0x12, _len_field(0x0A, _text(node, "node name")) + _len_field(0x12, inner)))
    for name, layout in strategy.layouts:
        item = _len_field(0x0A, _text(name, "parameter name")) + _len_field(0x12, _encode_layout(layout))
        parts.append(_len_field(0x1A, item))
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------------------


def _json_int(v: object, bounds: tuple[int, int], what: str, source: str) -> int:
    # MindSpore copies JSON values into protobuf integer fields, which refuse booleans, floats, strings,
    # null and out-of-range values; we refuse the same ones.
    if isinstance(v, bool) or not isinstance(v, int) or not bounds[0] <= v <= bounds[1]:
        raise StrategyError(f"strategy file {source}: {what} must be an integer in "
                            f"[{bounds[0]}, {bounds[1]}], got {v!r}")
    return int(v)


def _json_ints(v: object, bounds: tuple[int, int], what: str, source: str) -> tuple[int, ...]:
    if not isinstance(v, list):
        raise StrategyError(f"strategy file {source}: {what} must be a list of integers, got {v!r}")
    return tuple(_json_int(x, bounds, what, source) for x in v)


def _layout_from_json(name: str, item: object, source: str) -> RawLayout:
    if not isinstance(item, dict):
        raise StrategyError(f"strategy file {source}: parallel_layout_item {name!r} must be an object")
    where = f"parallel_layout_item {name!r}"
    for key in ("dev_matrix", "tensor_map", "field", "opt_weight_shard_step", "opt_weight_shard_size"):
        if key not in item:
            raise StrategyError(f"strategy file {source}: {where} has no {key!r}")
    tensor_map = item["tensor_map"]
    if isinstance(tensor_map, list) and any(isinstance(x, list) for x in tensor_map):
        raise StrategyError(f"strategy file {source}: {where} has a nested tensor_map; MindSpore's JSON "
                            f"strategies hold one flat list (multi-axis layouts need the protobuf format)")
    return RawLayout(
        dev_matrix=_json_ints(item["dev_matrix"], _U32, f"{where} dev_matrix", source),
        tensor_map=(_json_ints(tensor_map, _I32, f"{where} tensor_map", source),),
        param_split_shape=_json_ints(item.get("param_split_shape", []), _I64, f"{where} param_split_shape",
                                     source),
        indices_offset=_json_ints(item.get("indices_offset", []), _I64, f"{where} indices_offset", source),
        field=_json_int(item["field"], _I32, f"{where} field", source),
        opt_weight_shard_step=_json_int(item["opt_weight_shard_step"], _I32, f"{where} opt_weight_shard_step",
                                        source),
        opt_weight_shard_size=_json_int(item["opt_weight_shard_size"], _I32, f"{where} opt_weight_shard_size",
                                        source),
    )


_StrategyItem = tuple[str, int, tuple[tuple[int, ...], ...]]


def _strategy_item_from_json(node: str, item: object, source: str) -> _StrategyItem:
    where = f"parallel_strategy_item {node!r}"
    if not isinstance(item, dict) or "stage" not in item:
        raise StrategyError(f"strategy file {source}: {where} must be an object with a 'stage'")
    stage = _json_int(item["stage"], _U32, f"{where} stage", source)
    raw = item.get("parallel_strategy", [])
    if not isinstance(raw, list):
        raise StrategyError(f"strategy file {source}: {where} parallel_strategy must be a list of lists")
    dims = tuple(_json_ints(d, _U32, f"{where} parallel_strategy", source) for d in raw)
    return node, stage, dims


def _decode_json(data: bytes, source: str) -> StrategyFile:
    try:
        content = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise StrategyError(f"strategy file {source} is not valid JSON ({exc})") from None
    if not isinstance(content, dict):
        raise StrategyError(f"strategy file {source}: the JSON document must be an object")
    layouts = content.get("parallel_layout_item")
    if not isinstance(layouts, dict) or not layouts:
        raise StrategyError(f"strategy file {source} has no 'parallel_layout_item' object with parameter "
                            f"layouts; is it a MindSpore strategy file?")
    items = content.get("parallel_strategy_item", {})
    if not isinstance(items, dict):
        raise StrategyError(f"strategy file {source}: 'parallel_strategy_item' must be an object")
    current = content.get("current_stage", 0)
    return StrategyFile(
        layouts=[(name, _layout_from_json(name, item, source)) for name, item in layouts.items()],
        strategy_items=[_strategy_item_from_json(node, item, source) for node, item in items.items()],
        current_stage=_json_int(current, _U32, "current_stage", source),
        source=source,
    )


def strategy_to_json(strategy: StrategyFile) -> dict:
    """The JSON document MindSpore would read back as the same strategy.

    JSON objects cannot repeat a name, so duplicates collapse the way MindSpore's reader collapses them
    (first position, last value). Layouts with several TensorMap messages have no JSON form in MindSpore.
    """
    items: dict[str, dict] = {}
    for node, stage, dims in strategy.strategy_items:
        items[node] = {"stage": stage, "parallel_strategy": [list(d) for d in dims]}
    layouts: dict[str, dict] = {}
    for name, lay in strategy.layouts:
        if len(lay.tensor_map) != 1:
            raise StrategyError(f"parameter {name!r} has {len(lay.tensor_map)} TensorMap messages; "
                                f"MindSpore's JSON strategy format holds exactly one flat tensor_map, "
                                f"write protobuf instead")
        if len(lay.dev_matrix_messages()) != 1:
            raise StrategyError(f"parameter {name!r} has {len(lay.dev_matrix_messages())} DevMatrix "
                                f"messages; the JSON strategy format holds exactly one")
        entry: dict[str, object] = {
            "dev_matrix": list(lay.dev_matrix),
            "tensor_map": list(lay.tensor_map[0]),
            "field": lay.field,
            "opt_weight_shard_step": lay.opt_weight_shard_step,
            "opt_weight_shard_size": lay.opt_weight_shard_size,
        }
        if lay.param_split_shape or lay.indices_offset:
            entry["param_split_shape"] = list(lay.param_split_shape)
            entry["indices_offset"] = list(lay.indices_offset)
        layouts[name] = entry
    return {"current_stage": strategy.current_stage, "parallel_strategy_item": items,
            "parallel_layout_item": layouts}


# ---------------------------------------------------------------------------------------------------------
# Files and MPI payloads
# ---------------------------------------------------------------------------------------------------------


def read_strategy_bytes(path: str) -> bytes:
    """The raw bytes of a strategy file; a missing, unreadable or empty file is a StrategyError."""
    if not os.path.exists(path):
        raise StrategyError(f"strategy file {path} does not exist")
    if not os.path.isfile(path):
        raise StrategyError(f"strategy file {path} is not a regular file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise StrategyError(f"cannot read strategy file {path}: {exc.strerror or exc}") from None
    if not data:
        raise StrategyError(f"strategy file {path} is empty")
    return data


def parse_strategy_bytes(data: bytes, source: str, is_json: bool) -> StrategyFile:
    """Parse file content in the given format and refuse content without any parameter layout."""
    strategy = _decode_json(data, source) if is_json else decode_strategy(data, source)
    if not strategy.layouts:
        raise StrategyError(f"strategy file {source} holds no parameter layouts; is it a MindSpore strategy "
                            f"file?")
    return strategy


def read_strategy(path: str | os.PathLike[str]) -> StrategyFile:
    """Read one strategy file, protobuf or JSON by MindSpore's name rule, keeping entries in file order."""
    path = os.fspath(path)
    return parse_strategy_bytes(read_strategy_bytes(path), path, is_json_path(path))


def write_strategy(strategy: StrategyFile, path: str | os.PathLike[str]) -> None:
    """Write `strategy` where MindSpore will find it: JSON for a ``.json`` name, protobuf otherwise.

    The content is produced completely before the file is opened, so an unrepresentable strategy leaves no
    half-written file behind.
    """
    path = os.fspath(path)
    if is_json_path(path):
        data = json.dumps(strategy_to_json(strategy)).encode("utf-8")
    else:
        data = encode_strategy(strategy)
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise StrategyError(f"cannot write strategy file {path}: {exc.strerror or exc}") from None


_MAGIC = b"mpitrans-strategy-1\n"


def strategy_to_bytes(strategy: StrategyFile) -> bytes:
    """A self-contained byte form (the protobuf encoding plus the source name) to broadcast over MPI.

    Protobuf carries everything a StrategyFile holds, odd message counts included, so the receiver's
    layout maps are exactly the sender's; no pickle is involved.
    """
    source = strategy.source.encode("utf-8", "surrogateescape")
    return _MAGIC + wire.encode_varint64(len(source)) + source + encode_strategy(strategy)


def strategy_from_bytes(data: bytes) -> StrategyFile:
    """Inverse of `strategy_to_bytes`."""
    data = bytes(data)
    if not data.startswith(_MAGIC):
        raise StrategyError("strategy payload does not come from strategy_to_bytes")
    try:
        n, pos = wire.decode_varint_wrapping(data, len(_MAGIC), len(data))
    except WireError:
        raise StrategyError("strategy payload is truncated") from None
    if n > len(data) - pos:
        raise StrategyError("strategy payload is truncated")
    source = data[pos:pos + n].decode("utf-8", "surrogateescape")
    return decode_strategy(data[pos + n:], source)
