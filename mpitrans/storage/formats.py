"""The formats mpitrans reads and writes, chosen by file suffix: the one place the job asks for them.

Adding a format means adding a module with a `SourceReader` and/or a `TargetWriter` (see `base`) and one
line in `FORMATS`; nothing outside `storage/` changes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from mpitrans.errors import MpitransError
from mpitrans.metadata import TensorMeta
from mpitrans.storage.base import SourceReader, TargetWriter
from mpitrans.storage.ckpt.crypto import CkptReading, CkptWriting


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str

    def open_source(self, path: str, index: bytes | None = None, reading: CkptReading | None = None) -> SourceReader:
        """`index`: what a peer's `export_index()` of the same file returned (saves indexing it again);
        `reading`: CRC check and decryption of `.ckpt` files (other formats have neither)."""
        if self.name == "ckpt":
            from mpitrans.storage.ckpt.source import CkptSource

            return CkptSource(path, index, reading)
        if self.name == "safetensors":
            from mpitrans.storage.safetensors import SafetensorsSource

            return SafetensorsSource(path, index)
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
        raise MpitransError(f"writing {self.name} files is not supported")


CKPT = Format("ckpt", ".ckpt")
SAFETENSORS = Format("safetensors", ".safetensors")
FORMATS: dict[str, Format] = {CKPT.name: CKPT, SAFETENSORS.name: SAFETENSORS}
SOURCE_SUFFIXES: tuple[str, ...] = tuple(f.suffix for f in FORMATS.values())


def format_of_path(path: str) -> Format:
    """The format of a source file, by suffix."""
    for fmt in FORMATS.values():
        if path.endswith(fmt.suffix):
            return fmt
    raise MpitransError(f"{path}: not a checkpoint mpitrans can read (expected one of {', '.join(SOURCE_SUFFIXES)})")


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
    return os.path.isfile(path) and path.endswith(SOURCE_SUFFIXES)
