"""The one table of options: every flag spelling, configuration-file key, parser and help text.

The transform's and verify's command lines (and the small subcommands'), the YAML reader (`config`) and
the `JobOptions` a command line turns into are all derived from `OPTIONS`. Before, the same names lived
in four hand-synced tables and drifted (a spelling accepted on the command line but not recognised when
merging a file, two defaults for the same setting). A new option or spelling is now one entry here.

Defaults of job settings are not written here at all: they are read from `JobOptions`, the dataclass the
Python API (`mpitrans.transform`) builds too, so the API and the command line cannot disagree on them.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, fields
from typing import NoReturn

from mpitrans.errors import UsageError
from mpitrans.job.options import JobOptions

TRANSFORM, VERIFY, RANK_LIST, MERGE, RANK_TABLE = "transform", "verify", "rank-list", "merge-strategy", "rank-table"
_JOB = frozenset({TRANSFORM, VERIFY})

# ------------------------------------------------------------------------------------------ sizes

SIZE_FORMS = "a positive number of bytes, optionally with a unit K, M, G or T (powers of 1024): 65536, 64M, 1.5G"
_SIZE = re.compile(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*([KMGT]?)(?:I?B)?")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """'256M', '1.5G', '64KiB', '65536' -> bytes; ValueError (saying which forms are accepted) otherwise.

    Checked as the command line or a configuration file is read, so a typo such as `--max-buffer abc`,
    `0` or `-5` is one clear message before any process starts work, not a traceback or a job that
    silently runs with a buffer it cannot use.
    """
    raw = str(text)
    m = _SIZE.fullmatch(raw.strip().upper())
    if not m:
        raise ValueError(f"{raw!r} is not a size; give {SIZE_FORMS}")
    n = int(float(m.group(1)) * _UNITS[m.group(2)])
    if n <= 0:
        raise ValueError(f"{raw!r} is not a positive size; give {SIZE_FORMS}")
    return n


def size_text(n: int) -> str:
    """67108864 -> '64M': a default size in the form a user would type it."""
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit] and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


# ------------------------------------------------------------------------------------------ table


_JOB_FIELDS = {f.name for f in fields(JobOptions)}
_JOB_DEFAULTS = {f.name: f.default for f in fields(JobOptions) if f.default is not MISSING}


@dataclass(frozen=True)
class Option:
    """One setting: where its value goes, how it is spelt on the command line and in a file, how it is read.

    `spellings` are written without the leading dashes; each is accepted with `-` and with `_` (MindSpore
    and MindFormers spell flags with underscores), and the first is the one written back when a file's
    key becomes a flag. A `switch` also gets a `--no-...` form, so the command line can undo a file's
    `true`. A job setting (`dest` a `JobOptions` field) takes its default from `JobOptions`; only a
    command-line-only setting names its own (`cli_default`).
    """

    dest: str
    spellings: tuple[str, ...]
    help: str
    kind: str = "path"  # path | text | patterns (repeatable) | size | choice | switch (with --no-x) | flag
    commands: frozenset[str] = frozenset({TRANSFORM})
    required: bool = False
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    file_key: str | None = ""  # "" : the first spelling with underscores; None : not a configuration-file key
    cli_default: object = None

    @property
    def job_field(self) -> bool:
        return self.dest in _JOB_FIELDS

    @property
    def default(self) -> object:
        return _JOB_DEFAULTS.get(self.dest) if self.job_field else self.cli_default

    @property
    def flags(self) -> tuple[str, ...]:
        forms = [f"--{s.replace(sep, other)}" for s in self.spellings for sep, other in (("_", "-"), ("-", "_"))]
        return tuple(dict.fromkeys(forms))

    @property
    def negatives(self) -> tuple[str, ...]:
        if self.kind != "switch":
            return ()
        return tuple(dict.fromkeys(f"--no-{s.replace('_', '-')}" for s in self.spellings))

    @property
    def key(self) -> str | None:
        """The configuration-file key written in results and messages (None: not settable in a file)."""
        return None if self.file_key is None else self.file_key or self.spellings[0].replace("-", "_")

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key this setting may have in a file, the canonical one first."""
        if self.key is None:
            return ()
        return tuple(dict.fromkeys([self.key, *(s.replace("-", "_") for s in self.spellings)]))

    def pick(self, value: str) -> str:
        """A choice as the table spells it, whatever the case it was typed in (`debug`, `SafeTensors`);
        the value unchanged when it is none of them (the caller reports that)."""
        return next((c for c in self.choices if c.upper() == value.upper()), value)

    def help_text(self) -> str:
        default = self.default
        text = size_text(default) if self.kind == "size" and isinstance(default, int) else str(default)
        return self.help.replace("{default}", text).replace("{sizes}", SIZE_FORMS).replace("%", "%%")


_SRC = ("source model_dir holding rank_x/*.ckpt (the last .ckpt in name order is used per rank), or one full .ckpt "
        "file; also a full model as a store (a folder with param_name_map.json, or an .h5)")
_STRATEGY = ("strategy file (protobuf or .json), or a directory of per-stage files (ckpt_strategy_rank_x.ckpt) "
             "merged in memory")

OPTIONS: tuple[Option, ...] = (
    Option("src_checkpoint", ("src-checkpoint", "src-ckpt-dir"), _SRC, commands=_JOB, required=True,
           metavar="PATH"),
    Option("src_strategy", ("src-strategy", "src-ckpt-strategy", "src-strategy-path-or-dir"),
           f"source {_STRATEGY}; omit when the source is one full checkpoint", file_key="src_strategy_path_or_dir",
           commands=_JOB | {RANK_LIST}, metavar="PATH"),
    Option("dst_checkpoint", ("dst-checkpoint", "dst-checkpoint-dir", "dst-ckpt-dir"),
           "output directory; target rank x is written to DIR/rank_x/{prefix}x.ckpt", commands=_JOB,
           required=True, metavar="DIR"),
    Option("dst_strategy", ("dst-strategy", "dst-ckpt-strategy"),
           f"destination {_STRATEGY}; omit for one full checkpoint", commands=_JOB | {RANK_LIST}, metavar="PATH"),
    Option("prefix", ("prefix",), "output file name prefix (default: {default}, giving {default}x.ckpt)",
           kind="text", commands=_JOB, metavar="TEXT"),
    Option("dst_file", ("dst-file",), "name of the single file of a full merge, written as DIR/NAME instead of "
           "DIR/rank_0/{prefix}0.ckpt (MindFormers' merge walk-throughs: transformed.ckpt); only when the "
           "destination is one rank", kind="text", metavar="NAME", commands=_JOB),
    Option("output_format", ("output-format",), "format of the targets: ckpt or safetensors (default {default}); "
           "DIR/rank_x/{prefix}x.ckpt or .safetensors; or a full-model store in DIR (no --dst-strategy): "
           "unified-safetensors (MindSpore's unified_safetensors: partN.safetensors + param_name_map.json) or "
           "hdf5 (model.h5 over part-N.h5, readable with h5py)", kind="choice",
           choices=("ckpt", "safetensors", "unified-safetensors", "hdf5"), metavar="FORMAT", commands=_JOB),
    Option("store_files", ("store-files",), "part files of a unified-safetensors or hdf5 store, each written by "
           "one process (default: MindSpore's one per 3 GiB for unified-safetensors, one per process for hdf5)",
           kind="text", metavar="N", commands=_JOB),
    Option("max_buffer", ("max-buffer",), "bytes of chunk buffers each process may hold: {sizes} (default "
           "{default}, which already keeps the disks busy in our benchmark; more only raises memory)",
           kind="size", commands=_JOB, metavar="SIZE"),
    Option("rank_table", ("rank-table", "rank-table-file"),
           "HCCL rank table of the destination cluster: target rank x is written by a process running on the "
           "server that holds rank x (MPITRANS_SERVER_ID overrides a host's identity)", metavar="FILE"),
    Option("json_summary", ("json-summary",), "also write the summary (of the run, of a --dry-run, of verify's "
           "checks) as JSON to FILE (rank 0)", commands=_JOB, metavar="FILE"),
    Option("include", ("include",), "keep only parameters whose name matches this glob (repeatable, or "
           "comma-separated: 'model.*,lm_head.*')", kind="patterns", metavar="GLOB", commands=_JOB),
    Option("exclude", ("exclude",), "leave out parameters whose name matches this glob (repeatable, or "
           "comma-separated); their bytes are never read", kind="patterns", metavar="GLOB", commands=_JOB),
    Option("exclude_prefix", ("filter-out-param-prefix", "exclude-prefix"), "leave out parameters whose name "
           "starts with this prefix (MindFormers' filter_out_param_prefix, e.g. adam_; repeatable)",
           kind="patterns", metavar="PREFIX", commands=_JOB),
    Option("drop_optimizer_state", ("drop-optimizer-state",), "leave out optimizer state and training "
           "scalars (adam_m.*, adam_v.*, accu_grads.*, global_step, learning_rate, beta1_power, beta2_power, "
           "scale_sense, loss_scale, current_iterator_step, last_overflow_iterator_step, epoch_num, step_num)",
           kind="switch", commands=_JOB),
    Option("lora_merge", ("lora-merge",), "merge LoRA factors into their weights inside the reshard, as "
           "MindFormers' transform_ckpt_lora.py does: W + (B @ A) * scaling for each *lora_a/*lora_A/"
           "mindpet_delta_lora_a pair; every name containing lora_ is left out", kind="switch", commands=_JOB),
    Option("lora_scaling", ("lora-scaling",), "the LoRA scaling: a number or alpha/rank as a fraction (16/8); "
           "implies --lora-merge (default with --lora-merge: 1, as MindFormers)", kind="text", metavar="X",
           commands=_JOB),
    Option("src_postfix", ("src-postfix", "file-suffix"), "use the checkpoint of each rank_x/ whose name ends "
           "with TEXT.ckpt (MindFormers' --src_postfix 31_4 / file_suffix; default: the last in name order)",
           kind="text", metavar="TEXT", commands=_JOB),
    Option("world_size", ("world-size",), "MindFormers' target slice count, checked against the destination "
           "strategy's device count (the strategy decides it)", kind="text", metavar="N"),
    Option("process_num", ("process-num", "transform-process-num"), "accepted for MindFormers command lines "
           "and ignored with a note: mpitrans uses every MPI process, choose the count with mpirun -n",
           kind="text", metavar="N", cli_default=None),
    Option("auto_trans_ckpt", ("auto-trans-ckpt",), "MindFormers' training-time switch; accepted from a "
           "MindFormers YAML and ignored with a note (mpitrans is the offline conversion)", kind="switch",
           cli_default=False),
    Option("crc_check", ("crc-check",), "check the CRC of every source .ckpt that has one (MindSpore's "
           "load_checkpoint(crc_check=True); each file is read once more, by the process indexing it) and "
           "end plain .ckpt targets with one (save_checkpoint(crc_check=True))", kind="switch", commands=_JOB),
    Option("dec_key_file", ("dec-key-file",), "key of encrypted source .ckpt files: a file holding the raw "
           "key bytes (16, 24 or 32), or env:NAME for a variable holding it in hex; never a key itself",
           metavar="PATH", commands=_JOB),
    Option("dec_mode", ("dec-mode",), "cipher of the encrypted sources (default {default})", kind="choice",
           choices=("AES-GCM", "AES-CBC", "SM4-CBC"), metavar="MODE", commands=_JOB),
    Option("enc_key_file", ("enc-key-file",), "encrypt the .ckpt targets as save_checkpoint(enc_key=) does, "
           "with the key in this file (or env:NAME, hex)", metavar="PATH"),
    Option("enc_mode", ("enc-mode",), "cipher of encrypted targets (default {default})", kind="choice",
           choices=("AES-GCM", "AES-CBC", "SM4-CBC"), metavar="MODE"),
    Option("tmp_dir", ("tmp-dir",), "folder for the private plaintext copies that encryption needs (default: "
           "inside the output directory); they are removed when the job ends", metavar="DIR", commands=_JOB),
    Option("overwrite", ("overwrite",), "replace target files that already exist (default: refuse, before "
           "moving any byte)", kind="switch"),
    Option("resume", ("resume",), "keep targets that an earlier run of the same job completed (checked against "
           "DIR/mpitrans_manifest.json: size and CRC-32C) and redo the rest", kind="switch"),
    Option("dry_run", ("dry-run",), "plan the job and print what each process would read, send, receive and "
           "write, without touching the output directory", kind="switch"),
    Option("json", ("json",), "print the summary (or the --dry-run plan) as JSON on stdout instead of a table",
           kind="switch", cli_default=False),
    Option("quiet", ("quiet",), "print nothing but errors (and what --json asks for)", kind="switch",
           cli_default=False),
    Option("log_level", ("log-level",), "log level of rank 0 (others: WARNING; default {default})",
           kind="choice", choices=("DEBUG", "INFO", "WARNING", "ERROR"), cli_default="INFO"),
    Option("config", ("config",), "YAML file of these options with MindFormers key names (src_checkpoint, "
           "src_strategy_path_or_dir, dst_checkpoint, dst_strategy, prefix, ...); command-line flags win; "
           "./mpitrans.yaml is read when present and no flags are given", file_key=None, metavar="FILE"),
    Option("debug", ("debug",), "show the traceback of an error too (by default a user error is one line)",
           kind="flag", file_key=None, cli_default=False, commands=_JOB | {RANK_LIST, MERGE, RANK_TABLE}),
)

# MindFormers configuration keys that have no meaning here, with what to do instead.
NOT_OPTIONS = {
    "transform_by_rank": "mpitrans always converts target ranks in parallel",
    "load_checkpoint": "use src_checkpoint",
    "npu_num_per_node": "the rank table (rank_table) says how many devices each server has",
}


def option(dest: str) -> Option:
    """The table's entry for `dest`."""
    return next(o for o in OPTIONS if o.dest == dest)


def file_options() -> Iterator[Option]:
    """The settings a configuration file may hold, in the table's order."""
    return (o for o in OPTIONS if o.key is not None)


def by_file_key(key: str) -> Option | None:
    """The setting a configuration-file key names (dashes read as underscores), or None."""
    for o in file_options():
        if key in o.keys or key.replace("-", "_") in o.keys:
            return o
    return None


def dest_of_flag(name: str) -> str | None:
    """The setting that `--name` sets, in any spelling (`-` and `_` alike, `--no-` included), or None."""
    wanted = name.replace("-", "_")
    for o in OPTIONS:
        if any(f[2:].replace("-", "_") == wanted for f in o.flags + o.negatives):
            return o.dest
    return None


# ------------------------------------------------------------------------------------------ parsers


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a bad command line raises `UsageError` instead of printing the usage and
    exiting: under mpirun every process would print it, and a process that exits at once can have mpirun
    kill the one whose message was still on its way. The error then takes the same path as every other
    user error: one line, agreed on by all ranks, printed once."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)") from None


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Lists every spelling of an option once, then its value: `--src-checkpoint, --src_checkpoint PATH`
    (argparse would repeat the value after each of the four spellings)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        value = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {value}"


class _Switch(argparse.Action):
    """`--x` sets True, `--no-x` sets False (so a command line can undo a configuration file's `x: true`)."""

    def __init__(self, option_strings: list[str], dest: str, negatives: tuple[str, ...] = (), **kw: object) -> None:
        super().__init__(option_strings, dest, nargs=0, **kw)  # type: ignore[arg-type]
        self.negatives = negatives

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, option_string not in self.negatives)


class _Append(argparse.Action):
    """A repeatable value collected into a tuple (the `JobOptions` field's type)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, tuple(getattr(namespace, self.dest) or ()) + (values,))


def _add(parser: argparse.ArgumentParser, o: Option) -> None:
    kw: dict = {"dest": o.dest, "help": o.help_text(), "default": o.default}
    if o.kind == "patterns":
        kw["action"] = _Append
    if o.kind in ("switch", "flag"):
        parser.add_argument(*o.flags, *o.negatives, action=_Switch, negatives=o.negatives, **kw)
        return
    if o.choices:
        kw.update(choices=o.choices, type=o.pick)
    parser.add_argument(*o.flags, required=o.required, metavar=o.metavar, **kw)


def build_parser(command: str, prog: str, description: str, epilog: str | None = None) -> ArgumentParser:
    """The parser of `command` with every table option it takes; the caller adds positionals."""
    parser = ArgumentParser(prog=prog, description=textwrap.fill(description, 100), epilog=epilog,
                            formatter_class=HelpFormatter)
    for o in OPTIONS:
        if command in o.commands:
            _add(parser, o)
    return parser


def _from_args(o: Option, value: object) -> object:
    if o.kind == "path" and not o.required and isinstance(value, str) and value.strip() in ("None", "none"):
        return None  # MindFormers scripts pass `--src_ckpt_strategy None` for "no strategy"
    if o.dest in ("world_size", "store_files") and value is not None:
        if not str(value).isdigit() or int(str(value)) < 1:
            what = "devices" if o.dest == "world_size" else "files"
            raise UsageError(f"{o.flags[0]}: {value!r} is not a positive number of {what}")
        return int(str(value))
    if o.kind != "size":
        return value
    try:
        return parse_size(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UsageError(f"{o.flags[0]}: {exc}") from None


def compatibility_notes(args: argparse.Namespace) -> list[str]:
    """What a MindFormers setting that mpitrans accepts but does not use means here (rank 0 prints them)."""
    notes = []
    if getattr(args, "process_num", None) not in (None, "", "1"):
        notes.append(f"process_num {args.process_num} is ignored: every MPI process converts; choose how "
                     f"many with mpirun -n")
    if getattr(args, "auto_trans_ckpt", False):
        notes.append("auto_trans_ckpt is a MindFormers training switch and is ignored: mpitrans converts offline; "
                     "load the result with auto_trans_ckpt: False")
    return notes


def options_from_args(args: argparse.Namespace) -> JobOptions:
    """The job a parsed command line describes (the parser's defaults are `JobOptions`' own).

    Sizes are parsed here rather than by argparse so that a bad one reads `--max-buffer: 'abc' is not a
    size; give ...`, like the same mistake in a configuration file."""
    given = vars(args)
    values = {o.dest: _from_args(o, given[o.dest]) for o in OPTIONS if o.job_field and o.dest in given}
    if "quiet" in given:
        values["show_progress"] = not given["quiet"]
    return JobOptions(**values)
