"""CRC-32C, the checksum the manifest records for every output file (hardware-accelerated by `crc32c`)."""

from __future__ import annotations

import os


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """Extend a running CRC-32C with `data`."""
    import crc32c as _impl

    return _impl.crc32c(data, value)


def file_crc32c(path: str | os.PathLike[str], block: int = 8 << 20) -> tuple[int, int]:
    """(size, CRC-32C) of a whole file, read in blocks: how the manifest checks a finished target."""
    value, size = 0, 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(block)
        view = memoryview(buf)
        while n := f.readinto(buf):
            value = crc32c(view[:n], value)
            size += n
    return size, value
