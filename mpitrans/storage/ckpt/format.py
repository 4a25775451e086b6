"""The `.ckpt` format's constants and type names, shared by its reader and writer.

Format (as written by ``mindspore.save_checkpoint``): the file is a run of serialized ``Checkpoint`` messages,
one per *record*; protobuf concatenation makes the whole file parse as a single ``Checkpoint`` whose repeated
``value`` field lists every record. A record is::

    Checkpoint.value (1) -> Value { tag (1): name, tensor (2): TensorProto { dims (1)*, tensor_type (2),
                                                                           tensor_content (3) } }

A tensor larger than ``RECORD_BYTES`` is cut into several consecutive records with the same name; every record
repeats the full dims, and the loader simply concatenates their contents. The default (synchronous) saver cuts
at fixed byte counts, possibly mid-row; the asynchronous saver instead uses ``np.array_split`` along axis 0,
giving uneven row groups. We read either layout and write the first. A 0-d scalar has no dims (older writers
used ``[0]``); a string is a ``"str"`` record of UTF-32 text; a tensor with no elements gets no record at all.
Files saved with ``crc_check=True`` end with ``b"crc_num"`` plus the CRC-32 of everything before it as a
10-byte big-endian integer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mpitrans.errors import UnsupportedError
from mpitrans.storage import wire

# MindSpore cuts a tensor's bytes into records of at most this many bytes (its SLICE_SIZE KiB times 1024).
# Tests monkeypatch it, together with MindSpore's SLICE_SIZE, to exercise multi-record tensors on small data.
RECORD_BYTES = 512 * 1024 * 1024

# MindSpore type names -> bytes per element.
ITEM_SIZES: dict[str, int] = {
    "Float16": 2, "Float32": 4, "Float64": 8, "BFloat16": 2,
    "Int8": 1, "Int16": 2, "Int32": 4, "Int64": 8,
    "UInt8": 1, "UInt16": 2, "UInt32": 4, "UInt64": 8,
    "Bool": 1,
}

# Types MindSpore can write into a .ckpt but that we refuse, with the reason shown to the user.
UNSUPPORTED_TYPES: dict[str, str] = {
    "str": "a string value",
    "String": "a string value",
    "Int4": "packed 4-bit integers",
    "Complex64": "a complex tensor (MindSpore's own loader rejects it too)",
    "Complex128": "a complex tensor (MindSpore's own loader rejects it too)",
    "Float8E4M3FN": "an 8-bit float tensor (MindSpore's own loader rejects it too)",
    "Float8E5M2": "an 8-bit float tensor (MindSpore's own loader rejects it too)",
    "HiFloat8": "an 8-bit float tensor (MindSpore's own loader rejects it too)",
}
TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")

CRC_MAGIC = b"crc_num"
CRC_TRAILER_BYTES = len(CRC_MAGIC) + 10

# First four bytes of MindSpore's encrypted output (an int32 magic per cipher mode, little-endian).
CIPHER_MAGICS = (b"\xd8\x5e\x3a\x7f", b"\xd9\x5e\x3a\x7f", b"\xda\x5e\x3a\x7f")

HEADER_WINDOW = 64 * 1024  # bytes fetched per header read; small tensors' contents ride along in it
MAX_NAME_BYTES = 1 << 20  # a parameter name longer than this is corruption, not a name
MAX_TYPE_BYTES = 64
MAX_DIMS = 64

CRC_CHUNK = 8 * 1024 * 1024
WRITE_BUFFER = 1024 * 1024


# MindSpore type names <-> mpitrans' format-neutral dtype names (mpitrans.metadata).
TO_NEUTRAL: dict[str, str] = {
    "Float16": "float16", "Float32": "float32", "Float64": "float64", "BFloat16": "bfloat16",
    "Int8": "int8", "Int16": "int16", "Int32": "int32", "Int64": "int64",
    "UInt8": "uint8", "UInt16": "uint16", "UInt32": "uint32", "UInt64": "uint64",
    "Bool": "bool",
}
FROM_NEUTRAL: dict[str, str] = {v: k for k, v in TO_NEUTRAL.items()}


def itemsize_of(dtype: str) -> int:
    """Bytes per element of a MindSpore tensor type; refusing unknown types keeps byte arithmetic exact."""
    size = ITEM_SIZES.get(dtype)
    if size is None:
        reason = UNSUPPORTED_TYPES.get(dtype, "a tensor type mpitrans does not know")
        raise UnsupportedError(f"tensor type {dtype!r} is {reason}")
    return size


def encode_record_header(name: str, dtype: str, shape: Sequence[int], content_bytes: int) -> bytes:
    """All of one record that precedes its ``content_bytes`` of tensor data, laid out as MindSpore does."""
    tag = name.encode("utf-8")
    tensor_head = b"".join(wire.encode_varint_field(1, d) for d in shape)
    tensor_head += wire.encode_bytes_field(2, dtype.encode("ascii"))
    tensor_len = len(tensor_head) + wire.length_field_size(3, content_bytes)
    value_len = wire.length_field_size(1, len(tag)) + wire.length_field_size(2, tensor_len)
    return b"".join((
        wire.encode_length_prefix(1, value_len),
        wire.encode_bytes_field(1, tag),
        wire.encode_length_prefix(2, tensor_len),
        tensor_head,
        wire.encode_length_prefix(3, content_bytes),
    ))


