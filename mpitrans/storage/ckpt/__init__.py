"""MindSpore's `.ckpt` format, read and written without MindSpore and without holding tensors in memory.

* `format`: the record layout, MindSpore's type names and their format-neutral equivalents;
* `index`: every tensor's byte ranges, from headers alone;
* `boxread`: any box of a tensor, reading only the byte ranges it covers;
* `writer`: `CheckpointWriter` (tensor by tensor) and `CkptTarget` (the job's streaming `TargetWriter`);
* `source`: `CkptSource`, the job's `SourceReader`.
"""

from mpitrans.storage.ckpt.boxread import box_nbytes, read_box, read_box_into
from mpitrans.storage.ckpt.format import ITEM_SIZES, RECORD_BYTES, encode_record_header, itemsize_of
from mpitrans.storage.ckpt.index import CheckpointIndex, Record, TensorEntry, index_checkpoint
from mpitrans.storage.ckpt.source import CkptSource, tensors_of
from mpitrans.storage.ckpt.writer import CheckpointWriter, CkptTarget

__all__ = [
    "ITEM_SIZES", "RECORD_BYTES", "CheckpointIndex", "CheckpointWriter", "CkptSource", "CkptTarget", "Record",
    "TensorEntry", "box_nbytes", "encode_record_header", "index_checkpoint", "itemsize_of", "read_box",
    "read_box_into", "tensors_of",
]
