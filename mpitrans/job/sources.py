"""The source files this process reads, opened on first use and kept open for the job."""

from __future__ import annotations

from mpitrans.errors import MpitransError
from mpitrans.job.exchange import Ask
from mpitrans.job.metadata import SourceMetadata
from mpitrans.metadata import TensorMeta
from mpitrans.plan.schedule import Piece
from mpitrans.storage.base import SourceReader
from mpitrans.storage.ckpt.crypto import CkptReading
from mpitrans.storage.formats import open_source


class SourceFiles:
    """Readers by source rank. The first read of a tensor checks it against the metadata the job was
    planned with, so a file changed or different on this host fails loudly instead of giving wrong bytes."""

    def __init__(self, paths: dict[int, str], metas: dict[int, list[TensorMeta]],
                 sources: SourceMetadata | None = None, reading: CkptReading | None = None) -> None:
        self.paths = paths
        self.sources = sources  # exported indexes: a file is not indexed again to be read
        self.indexes: dict[int, bytes] = {}
        self.reading = reading  # .ckpt decryption (a file indexed elsewhere is decrypted here on first read)
        self.metas = {r: {m.name: m for m in ms} for r, ms in metas.items()}
        self._readers: dict[int, SourceReader] = {}
        self._listed: dict[int, dict[str, TensorMeta]] = {}
        self._checked: set[tuple[int, str]] = set()
        self.bytes_read = 0

    def reader(self, src_rank: int, name: str) -> SourceReader:
        reader = self._readers.get(src_rank)
        if reader is None:
            reader = self._readers[src_rank] = open_source(self.paths[src_rank], self.indexes.get(src_rank),
                                                                 self.reading)
            self._listed[src_rank] = {m.name: m for m in reader.tensors()}
        if (src_rank, name) not in self._checked:
            here = self._listed[src_rank].get(name)
            meta = self.metas.get(src_rank, {}).get(name)
            if here is None or (meta is not None and here != meta):
                raise MpitransError(
                    f"{self.paths[src_rank]}: parameter {name!r} differs from the copy of this file other ranks "
                    f"indexed (missing, or another dtype/shape)"
                )
            self._checked.add((src_rank, name))
        return reader

    def prefetch(self, files: set[int]) -> None:
        """Collective: fetch the exported indexes of the files this process will read."""
        if self.sources is not None:
            self.sources.fetch(files)
            self.indexes.update(self.sources.indexes(files))

    def read(self, piece: Piece | Ask, out: memoryview) -> None:
        self.reader(piece.src_rank, piece.tensor).read_box(piece.tensor, piece.src_box, out)
        self.bytes_read += len(out)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
