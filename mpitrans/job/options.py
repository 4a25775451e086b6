"""One job's options, with the one set of defaults that the Python API and the command line share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

from mpitrans.errors import MpitransError
from mpitrans.plan.filters import KEEP_ALL, ParamFilter, split_patterns
from mpitrans.storage.formats import target_format

DEFAULT_MAX_BUFFER = 64 << 20
DEFAULT_PREFIX = "checkpoint_"


@dataclass(frozen=True)
class Selection:
    """Which source files (`src_postfix`) and which of their parameters (`param_filter`) a job uses."""

    param_filter: ParamFilter = field(default=KEEP_ALL)
    src_postfix: str | None = None


ALL_OF_EACH_FILE = Selection()  # no filter, MindSpore's choice of file


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
    # Which parameters the targets keep (plan/filters.py); strings may hold comma-separated patterns.
    include: tuple[str, ...] = ()  # globs: keep only matching names
    exclude: tuple[str, ...] = ()  # globs: drop matching names
    exclude_prefix: tuple[str, ...] = ()  # MindFormers' filter_out_param_prefix: drop names starting so
    drop_optimizer_state: bool = False  # drop adam_m./adam_v./accu_grads. and the training scalars
    src_postfix: str | None = None  # which checkpoint of each rank_x/ (MindFormers' file_suffix)
    world_size: int | None = None  # MindFormers' target count: checked against the destination strategy

    output_format: str = "ckpt"  # the targets' format: ckpt, safetensors, or a store (storage.formats)
    store_files: int | None = None  # part files of a store (job.stores); None: the format's default
    # unified-safetensors only (Python API): MindSpore's choice_func; False leaves a strategy parameter out
    # of the part files (rank 0's shard then goes to hyper_param.safetensors, as MindSpore does)
    choice_func: Callable[[str], bool] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        target_format(self.output_format)  # an unknown name is refused before any rank starts work
        for name in ("include", "exclude", "exclude_prefix"):
            object.__setattr__(self, name, split_patterns(getattr(self, name)))
        if not isinstance(self.max_buffer, int) or self.max_buffer <= 0:
            raise MpitransError(f"max_buffer must be a positive number of bytes, got {self.max_buffer!r}")
        if self.store_files is not None and (not isinstance(self.store_files, int) or self.store_files < 1):
            raise MpitransError(f"store_files must be a positive number of files, got {self.store_files!r}")

    def selection(self) -> Selection:
        keep = ParamFilter(self.include, self.exclude, self.exclude_prefix, self.drop_optimizer_state)
        return Selection(keep, self.src_postfix or None)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def check_prefix(prefix: str) -> None:
    """Output names are `{prefix}{rank}.ckpt` inside rank_x/: a prefix must not leave that directory."""
    if not isinstance(prefix, str) or "/" in prefix or "\\" in prefix or ".." in prefix or "\0" in prefix:
        raise MpitransError(f"unsafe --prefix {prefix!r}: it may not contain path separators or '..'")
