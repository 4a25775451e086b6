"""Source-file metadata: indexed once per job, and sent only where it is needed.

Each needed file is indexed by one process that sees it (spread round-robin over its seers). Its
exported index (the tensor list with byte ranges, `SourceReader.export_index`) is identified by a hash:
data-parallel replicas, and any files of one layout class, export identical indexes. The job shares only
the small map file -> hash; the indexes themselves travel on request, each distinct one once to each
process that needs it, and are parsed once into metadata lists that all its files share. A process
that later reads a file is handed that export and never indexes the file again.
"""

from __future__ import annotations

import hashlib
import json
import marshal
from collections.abc import Iterable

from mpitrans.job.agree import agree
from mpitrans.job.inventory import Inventory
from mpitrans.job.transport import Transport
from mpitrans.metadata import TensorMeta
from mpitrans.storage.base import SourceReader
from mpitrans.storage.ckpt.crypto import CkptReading
from mpitrans.storage.formats import open_source


class SourceMetadata:
    """What this process knows about the source files: every indexed file's hash, and the exported
    indexes (and parsed metadata) of the ones it asked for."""

    def __init__(self, t: Transport, inv: Inventory, hashes: dict[int, str], held: dict[str, bytes],
                 indexer: dict[int, int]) -> None:
        self.t = t
        self.inv = inv
        self.hashes = hashes  # source rank -> hash of its exported index, for every indexed file
        self.blobs = held  # hash -> exported index, for the hashes this process holds
        self.indexer = indexer  # source rank -> the process that indexed it
        self._parsed: dict[str, list[TensorMeta]] = {}

    def absorb(self, more: SourceMetadata) -> None:
        """Add the files a second `index_sources` call indexed."""
        self.hashes.update(more.hashes)
        self.blobs.update(more.blobs)
        self.indexer.update(more.indexer)

    def twins(self, files: Iterable[int]) -> set[int]:
        """`files` and every indexed file with the same structure (replicas: more candidates to read)."""
        wanted = {self.hashes[g] for g in files if g in self.hashes}
        return {g for g, h in self.hashes.items() if h in wanted}

    def fetch(self, files: Iterable[int]) -> None:
        """Collective: get the exported indexes of `files` this process does not hold yet."""
        missing = sorted({self.hashes[g] for g in files if g in self.hashes} - set(self.blobs))
        owner = {}
        for g, h in sorted(self.hashes.items()):
            owner.setdefault(h, self.indexer[g])
        asks: list[list[str]] = [[] for _ in range(self.t.size)]
        for h in missing:
            asks[owner[h]].append(h)
        inbox = self.t.alltoall_bytes([marshal.dumps(a) for a in asks])
        replies = [marshal.dumps({h: self.blobs[h] for h in marshal.loads(b)}) for b in inbox]
        for blob in self.t.alltoall_bytes(replies):
            self.blobs.update(marshal.loads(blob))

    def metas(self, files: Iterable[int]) -> dict[int, list[TensorMeta]]:
        """Metadata of those of `files` this process holds; files of one structure share one list."""
        out = {}
        for g in sorted(files):
            h = self.hashes.get(g)
            if h is None or h not in self.blobs:
                continue
            if h not in self._parsed:
                self._parsed[h] = open_source(self.inv.path_of(g), self.blobs[h]).tensors()
            out[g] = self._parsed[h]
        return out

    def indexes(self, files: Iterable[int]) -> dict[int, bytes]:
        return {g: self.blobs[self.hashes[g]] for g in files if self.hashes.get(g) in self.blobs}


def _twin(indexed: list, path: str) -> SourceReader | None:
    """`path` opened with the index of a structural twin among `indexed` (readers that can tell), if any."""
    for reader in indexed:
        twin = getattr(reader, "twin", None)
        found = twin(path) if twin is not None else None
        if found is not None:
            return found
    return None


def index_sources(t: Transport, inv: Inventory, to_index: list[int],
                  reading: CkptReading | None = None) -> SourceMetadata:
    """Collective: index `to_index` (each file once, by one of its seers) and share the file -> hash map.
    With `reading.crc_check` the indexing process is also the one that checks the file's CRC."""
    indexer = {g: inv.seers[g][i % len(inv.seers[g])] for i, g in enumerate(to_index)}

    def index_mine() -> tuple[dict[str, str], dict[str, bytes]]:
        hashes: dict[str, str] = {}
        blobs: dict[str, bytes] = {}
        indexed: list = []  # readers of files indexed here: a later file may be a structural twin of one
        for g in to_index:
            if indexer[g] != t.rank:
                continue
            path = inv.paths[t.rank][g]
            reader = _twin(indexed, path)
            if reader is None:
                reader = open_source(path, reading=reading)
                if len(indexed) < 8:
                    indexed.append(reader)
            try:
                blob = reader.export_index()
            finally:
                reader.close()
            h = hashlib.sha1(blob).hexdigest()
            hashes[str(g)] = h
            blobs[h] = blob
        return hashes, blobs

    mine, held = agree(t, index_mine)
    hashes: dict[int, str] = {}
    for blob in t.allgather_bytes(json.dumps(mine).encode()):
        hashes.update({int(g): h for g, h in json.loads(blob).items()})
    return SourceMetadata(t, inv, hashes, held, indexer)
