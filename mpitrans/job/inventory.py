"""What each process sees on its disk, gathered so every process knows who can read which source file.

Files are identified by (host, device, inode), never by path or host name alone: two processes on one
host share a disk, two hosts with a shared file system see the same inode, and two hosts without one
may hold different files at the same path.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections import defaultdict
from dataclasses import dataclass

from mpitrans.job.agree import agree
from mpitrans.job.transport import Transport
from mpitrans.storage.discover import discover_sources
from mpitrans.storage.parts import source_size

log = logging.getLogger("mpitrans")


@dataclass
class Inventory:
    visible: dict[int, str]  # source rank -> path, as this process sees it
    paths: list[dict[int, str]]  # per MPI rank: source rank -> path
    sizes: dict[int, int]  # source rank -> file size
    seers: dict[int, list[int]]  # source rank -> MPI ranks that see its file
    file_ids: dict[int, dict[int, tuple]]  # source rank -> MPI rank -> (host, st_dev, st_ino)

    def path_of(self, g: int) -> str:
        """The file of source rank `g` as its first seer names it (for messages and fingerprints)."""
        return self.paths[self.seers[g][0]][g]


def gather_inventory(t: Transport, src_checkpoint: str, src_postfix: str | None = None) -> Inventory:
    notes: dict[int, str] = {}
    visible = agree(t, lambda: discover_sources(src_checkpoint, src_postfix, notes))
    host = socket.gethostname()
    listing = {}
    for g, path in visible.items():
        st = os.stat(path)
        listing[str(g)] = [path, source_size(path), host, st.st_dev, st.st_ino]
    paths: list[dict[int, str]] = []
    sizes: dict[int, int] = {}
    seers: dict[int, list[int]] = defaultdict(list)
    file_ids: dict[int, dict[int, tuple]] = defaultdict(dict)
    for r, blob in enumerate(t.allgather_bytes(json.dumps(listing).encode())):
        inv = {int(k): v for k, v in json.loads(blob).items()}
        paths.append({g: v[0] for g, v in inv.items()})
        for g, v in inv.items():
            sizes[g] = v[1]
            file_ids[g][r] = tuple(v[2:])
            seers[g].append(r)
    for g, note in sorted(notes.items()):
        if seers[g][0] == t.rank:  # once per source rank, by the first process that sees it
            log.warning("%s", note)
    return Inventory(visible, paths, sizes, dict(seers), dict(file_ids))
