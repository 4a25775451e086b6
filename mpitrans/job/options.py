"""One job's options, with the one set of defaults that the Python API and the command line share."""

from __future__ import annotations

from dataclasses import dataclass, fields

from mpitrans.errors import MpitransError
from mpitrans.storage.formats import target_format

DEFAULT_MAX_BUFFER = 64 << 20
DEFAULT_PREFIX = "checkpoint_"


@dataclass(frozen=True)
class JobOptions:
    """What a transform (or its `verify`) needs to know; everything else is derived from the files."""

    src_checkpoint: str
    dst_checkpoint: str
    src_strategy: str | None = None  # None: the source is one full checkpoint
    dst_strategy: str | None = None  # None: one full (merged) target
    prefix: str = DEFAULT_PREFIX
    max_buffer: int = DEFAULT_MAX_BUFFER  # bytes of chunk buffers one process may hold
    rank_table: str | None = None  # HCCL rank table deciding which host writes which target
    overwrite: bool = False  # replace existing targets (otherwise refuse before any byte moves)
    resume: bool = False  # keep targets an earlier run of the same job completed
    strict: bool = True  # refuse a destination strategy naming parameters no source holds
    write_manifest: bool = True
    show_progress: bool = False
    dry_run: bool = False  # plan and report, write nothing
    output_format: str = "ckpt"  # the targets' format: ckpt or safetensors (storage.formats)

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        target_format(self.output_format)  # an unknown name is refused before any rank starts work
        if not isinstance(self.max_buffer, int) or self.max_buffer <= 0:
            raise MpitransError(f"max_buffer must be a positive number of bytes, got {self.max_buffer!r}")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def check_prefix(prefix: str) -> None:
    """Output names are `{prefix}{rank}.ckpt` inside rank_x/: a prefix must not leave that directory."""
    if not isinstance(prefix, str) or "/" in prefix or "\\" in prefix or ".." in prefix or "\0" in prefix:
        raise MpitransError(f"unsafe --prefix {prefix!r}: it may not contain path separators or '..'")
