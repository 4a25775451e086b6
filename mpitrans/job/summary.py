"""What a job did, per process and in total: the run summary and its JSON form."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass
class RankStats:
    rank: int
    host: str
    targets: list[int] = field(default_factory=list)
    bytes_read: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    # [source rank, sending MPI rank] pairs whose bytes reached this rank over MPI, not from its disk.
    received_from: list[list[int]] = field(default_factory=list)
    # Seconds per phase: strategies (read, broadcast, inventory), index, metadata (fetch, checks), plan,
    # exchange (reader decisions, asks, index hand-over), bytes (the rounds), finish (manifest).
    phases: dict[str, float] = field(default_factory=dict)

    def lap(self, phase: str, since: float) -> float:
        """Add the time since `since` to `phase`; returns now, for the next lap."""
        now = time.perf_counter()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - since, 4)
        return now


@dataclass
class Summary:
    dst_checkpoint: str
    targets: dict[int, str]  # target rank -> file path
    placement: dict[int, int]  # target rank -> MPI rank that wrote it
    ranks: list[RankStats]
    wall_seconds: float

    @property
    def bytes_written(self) -> int:
        return sum(r.bytes_written for r in self.ranks)

    def to_json(self) -> dict:
        d = asdict(self)
        d["bytes_written"] = self.bytes_written
        d["gb_per_s"] = self.bytes_written / self.wall_seconds / 1e9 if self.wall_seconds > 0 else 0.0
        return d


def human_size(n: float) -> str:
    """1536 -> '1.5 KiB': sizes as people read them in summaries and reports."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)
