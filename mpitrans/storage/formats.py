"""The formats mpitrans reads and writes, chosen by file suffix: the one place the job asks for them.

Adding a format means adding a module with a `SourceReader` and/or a `TargetWriter` (see `base`) and one
line in `FORMATS`; nothing outside `storage/` changes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mpitrans.errors import MpitransError
from mpitrans.metadata import TensorMeta
from mpitrans.storage.base import SourceReader, TargetWriter

if TYPE_CHECKING:  # the .ckpt package pulls in numpy: imported where a file is opened
    from mpitrans.storage.ckpt.crypto import CkptReading, CkptWriting


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str  # of the files this format writes (a store's part files)
    store: bool = False  # a full model spread over files (`job.stores`), not one file per target rank

    def open_source(self, path: str, index: bytes | None = None, reading: CkptReading | None = None) -> SourceReader:
        """`index`: what a peer's `export_index()` of the same file returned (saves indexing it again);
        `reading`: CRC check and decryption of `.ckpt` files (other formats have neither)."""
        if self.name == "ckpt":
            from mpitrans.storage.ckpt.source import CkptSource

            return CkptSource(path, index, reading)
        if self.name == "safetensors":
            from mpitrans.storage.safetensors import SafetensorsSource

            return SafetensorsSource(path, index)
        if self.name == "unified-safetensors":
            from mpitrans.storage.unified import UnifiedSource

            return UnifiedSource(path, index)
        if self.name == "hdf5":
            from mpitrans.storage.hdf5 import Hdf5Source

            return Hdf5Source(path, index)
        raise MpitransError(f"{path}: reading {self.name} files is not supported")

    def open_target(self, path: str, tensors: Sequence[TensorMeta],
                    writing: CkptWriting | None = None) -> TargetWriter:
        """`writing`: CRC trailer or encryption of a `.ckpt` target (refused for other formats by the job)."""
        if self.name == "ckpt":
            from mpitrans.storage.ckpt.writer import CkptTarget

            return CkptTarget(path, tensors, writing)
        if self.name == "safetensors":
            from mpitrans.storage.safetensors import SafetensorsTarget

            return SafetensorsTarget(path, tensors)
        if self.name == "hdf5":
            from mpitrans.storage.hdf5 import Hdf5PartTarget

            return Hdf5PartTarget(path, tensors)
        raise MpitransError(f"writing {self.name} files is not supported")


CKPT = Format("ckpt", ".ckpt")
SAFETENSORS = Format("safetensors", ".safetensors")
# Stores: a full model in several files. Their part files are written by the formats their suffixes
# name; as a source, a unified store is its `param_name_map.json` and an HDF5 store its master `.h5`.
UNIFIED_SAFETENSORS = Format("unified-safetensors", ".safetensors", store=True)
HDF5 = Format("hdf5", ".h5", store=True)
FORMATS: dict[str, Format] = {f.name: f for f in (CKPT, SAFETENSORS, UNIFIED_SAFETENSORS, HDF5)}
SOURCE_SUFFIXES: tuple[str, ...] = (CKPT.suffix, SAFETENSORS.suffix)  # what a rank_x folder holds
UNIFIED_MAP_NAME = "param_name_map.json"


def format_of_path(path: str) -> Format:
    """The format of a file, by suffix (a unified store's map by its name)."""
    if os.path.basename(path) == UNIFIED_MAP_NAME:
        return UNIFIED_SAFETENSORS
    for fmt in (CKPT, SAFETENSORS, HDF5):
        if path.endswith(fmt.suffix):
            return fmt
    raise MpitransError(f"{path}: not a checkpoint mpitrans can read (expected one of {', '.join(SOURCE_SUFFIXES)}, "
                        f"{HDF5.suffix} or a unified store's {UNIFIED_MAP_NAME})")


def open_source(path: str, index: bytes | None = None, reading: CkptReading | None = None) -> SourceReader:
    """A source file's reader; a directory is a rank's `_part` files read as one (`storage.parts`)."""
    if os.path.isdir(path):
        from mpitrans.storage.parts import PartsSource

        return PartsSource(path, index)
    return format_of_path(path).open_source(path, index, reading)


def target_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise MpitransError(f"unknown output format {name!r} (known: {', '.join(FORMATS)})") from None


def target_filename(stem: str, fmt: str = "ckpt") -> str:
    """`checkpoint_3` -> `checkpoint_3.ckpt`: the planner names targets, the format adds its suffix."""
    return stem + target_format(fmt).suffix


def is_source_file(path: str) -> bool:
    return os.path.isfile(path) and (path.endswith(SOURCE_SUFFIXES + (HDF5.suffix,))
                                     or os.path.basename(path) == UNIFIED_MAP_NAME)
