"""One job's options, with the one set of defaults that the Python API and the command line share."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from mpitrans.errors import MpitransError
from mpitrans.plan.filters import KEEP_ALL, ParamFilter, split_patterns
from mpitrans.plan.lora import LoraMerge, parse_scaling
from mpitrans.storage.formats import target_filename, target_format

if TYPE_CHECKING:
    from mpitrans.storage.ckpt.crypto import CkptReading, CkptWriting

DEFAULT_MAX_BUFFER = 64 << 20
DEFAULT_PREFIX = "checkpoint_"


@dataclass(frozen=True)
class Selection:
    """Which source files (`src_postfix`) and which of their parameters (`param_filter`) a job uses."""

    param_filter: ParamFilter = field(default=KEEP_ALL)
    src_postfix: str | None = None
    lora: LoraMerge | None = None  # merge LoRA factors into their weights (plan/lora.py)


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
    # LoRA merge (plan/lora.py): W + (B @ A) * lora_scaling for every factor pair, factors left out.
    # Giving lora_scaling (a number or "alpha/rank") implies the merge; lora_merge alone scales by 1.
    lora_merge: bool = False
    lora_scaling: float | str | None = None
    dst_file: str | None = None  # the one target of a full merge written as DIR/NAME (not rank_0/...)

    output_format: str = "ckpt"  # the targets' format: ckpt, safetensors, or a store (storage.formats)
    # MindSpore's crc_check and enc_key/dec_key for .ckpt files (storage/ckpt/crypto.py). Keys are named
    # (a file, or env:NAME), never held here, so no option dump can show one.
    crc_check: bool = False  # check sources' CRC trailers while indexing; write one on plain targets
    dec_key_file: str | None = None
    dec_mode: str = "AES-GCM"
    enc_key_file: str | None = None
    enc_mode: str = "AES-GCM"
    tmp_dir: str | None = None  # private plaintext copies go here (default: under dst_checkpoint)
    store_files: int | None = None  # part files of a store (job.stores); None: the format's default
    # unified-safetensors only (Python API): MindSpore's choice_func; False leaves a strategy parameter out
    # of the part files (rank 0's shard then goes to hyper_param.safetensors, as MindSpore does)
    choice_func: Callable[[str], bool] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        target_format(self.output_format)  # an unknown name is refused before any rank starts work
        if self.dst_file is not None:
            check_dst_file(self.dst_file, self.output_format)
        for name in ("include", "exclude", "exclude_prefix"):
            object.__setattr__(self, name, split_patterns(getattr(self, name)))
        if self.lora_scaling is not None:
            object.__setattr__(self, "lora_scaling", parse_scaling(self.lora_scaling))
            object.__setattr__(self, "lora_merge", True)
        # Imported here: the .ckpt package pulls in numpy, which launcher-side tools (rank tables) avoid.
        from mpitrans.storage.ckpt.crypto import check_mode

        check_mode(self.dec_mode, "--dec-mode")
        check_mode(self.enc_mode, "--enc-mode")
        if self.output_format != "ckpt" and (self.enc_key_file or self.crc_check):
            raise MpitransError(f"--enc-key-file and --crc-check apply to ckpt targets, not to "
                                f"--output-format {self.output_format}")
        if not isinstance(self.max_buffer, int) or self.max_buffer <= 0:
            raise MpitransError(f"max_buffer must be a positive number of bytes, got {self.max_buffer!r}")
        if self.store_files is not None and (not isinstance(self.store_files, int) or self.store_files < 1):
            raise MpitransError(f"store_files must be a positive number of files, got {self.store_files!r}")

    def ckpt_files(self, scratch_base: str | None = None) -> tuple[CkptReading, CkptWriting]:
        """How this process reads and writes `.ckpt` files, keys loaded (on every process: the key file,
        or the variable, must be there). One scratch folder holds every private plaintext copy: in
        `tmp_dir`, else `scratch_base` (a dry run keeps out of the output directory), else the output."""
        from mpitrans.storage.ckpt.crypto import CkptReading, CkptWriting, Scratch, load_key

        scratch = Scratch(self.tmp_dir or scratch_base or self.dst_checkpoint)
        dec = load_key(self.dec_key_file, self.dec_mode, "--dec-key-file") if self.dec_key_file else None
        enc = load_key(self.enc_key_file, self.enc_mode, "--enc-key-file") if self.enc_key_file else None
        return (CkptReading(self.crc_check, dec, self.dec_mode, scratch),
                CkptWriting(self.crc_check and enc is None, enc, self.enc_mode, scratch))

    def selection(self) -> Selection:
        keep = ParamFilter(self.include, self.exclude, self.exclude_prefix, self.drop_optimizer_state)
        lora = LoraMerge(1.0 if self.lora_scaling is None else float(self.lora_scaling)) if self.lora_merge else None
        return Selection(keep, self.src_postfix or None, lora)

    def relpath(self, target: int, stem: str) -> str:
        """Where target `target` goes inside the output directory: `rank_x/{stem}{suffix}`, or `dst_file`
        (a full merge's single file named as MindFormers' merge scripts name it, e.g. transformed.ckpt)."""
        if self.dst_file is not None:
            return self.dst_file
        return os.path.join(f"rank_{target}", target_filename(stem, self.output_format))

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def check_prefix(prefix: str) -> None:
    """Output names are `{prefix}{rank}.ckpt` inside rank_x/: a prefix must not leave that directory."""
    if not isinstance(prefix, str) or "/" in prefix or "\\" in prefix or ".." in prefix or "\0" in prefix:
        raise MpitransError(f"unsafe --prefix {prefix!r}: it may not contain path separators or '..'")


def check_dst_file(name: str, output_format: str) -> None:
    """`--dst-file` is a plain file name inside the output directory, with the output format's suffix (a
    name ending otherwise would be loaded as the wrong format, or not found by a loader globbing it)."""
    suffix = target_format(output_format).suffix
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise MpitransError(f"--dst-file {name!r}: give a plain file name (e.g. transformed{suffix}); it is "
                            f"written inside --dst-checkpoint")
    if not name.endswith(suffix) or name == suffix:
        raise MpitransError(f"--dst-file {name!r}: the targets are {output_format} files, so the name must end "
                            f"with {suffix} (or choose the format with --output-format)")


def check_single_target(dst_file: str | None, targets: Collection[int]) -> None:
    """`--dst-file` names the single file of a full merge; with several targets one name cannot do."""
    if dst_file is not None and len(targets) != 1:
        raise MpitransError(f"--dst-file {dst_file}: names the single output of a full merge, but the destination "
                            f"strategy describes {len(targets)} target ranks (written as rank_x/...); drop "
                            f"--dst-file, or drop --dst-strategy to merge into one file")
