"""`python -m mpitrans --config transform.yaml`: transform options from a YAML file.

MindFormers users already describe conversions in YAML (`src_checkpoint`, `src_strategy_path_or_dir`,
`dst_checkpoint`, `dst_strategy`, `prefix`, ...), and a file is easier to keep with a cluster's job
scripts than a long command line repeated under `mpirun`. The file only supplies defaults: any option
also given on the command line, in any of its spellings, wins.

PyYAML is not a dependency of mpitrans (nor of mindspore), so a small parser for flat `key: value`
files is built in; PyYAML is used when it happens to be installed. Either way only a flat mapping of
scalars is accepted, so both read a valid file the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from mpitrans.errors import MpitransError

DEFAULT_CONFIG = "mpitrans.yaml"


class ConfigError(MpitransError):
    """The configuration file is unreadable, not flat YAML, or has an unknown or ill-typed key."""

    exit_code = 2  # like a bad command line: the job was never described correctly


# canonical key -> (command-line flag written for it, other key spellings accepted in the file)
KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "src_checkpoint": ("--src-checkpoint", ("src_ckpt_dir",)),
    "src_strategy_path_or_dir": ("--src-strategy", ("src_strategy", "src_ckpt_strategy")),
    "dst_checkpoint": ("--dst-checkpoint", ("dst_checkpoint_dir", "dst_ckpt_dir")),
    "dst_strategy": ("--dst-strategy", ("dst_ckpt_strategy",)),
    "prefix": ("--prefix", ()),
    "max_buffer": ("--max-buffer", ()),
    "rank_table": ("--rank-table", ("rank_table_file",)),
    "json_summary": ("--json-summary", ()),
    "overwrite": ("--overwrite", ()),
    "quiet": ("--quiet", ()),
    "log_level": ("--log-level", ()),
}
BOOLEAN_KEYS = {"overwrite", "quiet"}
# Keys whose value may be "None" to mean "not given", as in MindFormers' `--src_ckpt_strategy None`.
OPTIONAL_PATH_KEYS = {"src_strategy_path_or_dir", "dst_strategy", "rank_table", "json_summary"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# MindFormers keys that have no meaning here, with what to do instead.
_NOT_HERE = {
    "world_size": "the target rank count comes from dst_strategy",
    "process_num": "mpitrans uses every MPI process: choose the count with mpirun -n",
    "transform_process_num": "mpitrans uses every MPI process: choose the count with mpirun -n",
    "transform_by_rank": "mpitrans always converts target ranks in parallel",
    "auto_trans_ckpt": "this is a MindFormers training switch; mpitrans is the offline conversion",
    "load_checkpoint": "use src_checkpoint",
    "npu_num_per_node": "the rank table (rank_table) says how many devices each server has",
}

_ALIASES: dict[str, str] = {}
for _key, (_flag, _aliases) in KEYS.items():
    _ALIASES[_key] = _key
    for _alias in _aliases:
        _ALIASES[_alias] = _key

# Every spelling of each key on the transform command line, normalized to underscores without dashes
# (argparse accepts --src-strategy and --src_strategy alike, see mpitrans.cli.main).
_FLAG_SPELLINGS: dict[str, set[str]] = {
    "src_checkpoint": {"src_checkpoint", "src_ckpt_dir"},
    "src_strategy_path_or_dir": {"src_strategy", "src_strategy_path_or_dir", "src_ckpt_strategy"},
    "dst_checkpoint": {"dst_checkpoint", "dst_checkpoint_dir", "dst_ckpt_dir"},
    "dst_strategy": {"dst_strategy", "dst_ckpt_strategy"},
    "prefix": {"prefix"},
    "max_buffer": {"max_buffer"},
    "rank_table": {"rank_table", "rank_table_file"},
    "json_summary": {"json_summary"},
    "overwrite": {"overwrite", "no_overwrite"},
    "quiet": {"quiet", "no_quiet"},
    "log_level": {"log_level"},
}


# ----------------------------------------------------------------------------------------- parsing


_INT = re.compile(r"[-+]?(0|[1-9][0-9_]*)")
_FLOAT = re.compile(r"[-+]?(\d[\d_]*\.\d*|\.\d+|\d[\d_]*)([eE][-+]?\d+)?")
_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}
_NULL = {"null", "~", ""}


def _strip_comment(text: str) -> str:
    """Drop a ` # comment` that is not inside quotes."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i]
    return text


def _scalar(raw: str, where: str) -> object:
    s = raw.strip()
    if not s:
        return None
    if s[0] == '"':
        if len(s) < 2 or not s.endswith('"'):
            raise ConfigError(f"{where}: unterminated double-quoted string")
        body = s[1:-1]
        escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "/": "/", "0": "\0"}
        out, i = [], 0
        while i < len(body):
            ch = body[i]
            if ch == "\\" and i + 1 < len(body) and body[i + 1] in escapes:
                out.append(escapes[body[i + 1]])
                i += 2
                continue
            if ch == '"':
                raise ConfigError(f"{where}: stray quote inside a double-quoted string")
            out.append(ch)
            i += 1
        return "".join(out)
    if s[0] == "'":
        if len(s) < 2 or not s.endswith("'"):
            raise ConfigError(f"{where}: unterminated single-quoted string")
        body = s[1:-1]
        if re.search(r"(?<!')'(?!')", body.replace("''", "")):
            raise ConfigError(f"{where}: stray quote inside a single-quoted string")
        return body.replace("''", "'")
    if s[0] in "[{&*!|>%@`":
        raise ConfigError(f"{where}: only plain scalars are supported (no lists, mappings, anchors or "
                          f"block strings): {s}")
    low = s.lower()
    if low in _NULL:
        return None
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    if _INT.fullmatch(s):
        return int(s.replace("_", ""))
    if _FLOAT.fullmatch(s) and any(c in s for c in ".eE"):
        return float(s.replace("_", ""))
    return s


def parse_flat_yaml(text: str, source: str = "config") -> dict[str, object]:
    """Parse a flat YAML mapping of scalars (`key: value` lines, comments, quotes, null, booleans, ints).

    Indented lines, lists and nested mappings are rejected with the line number rather than misread.
    """
    data: dict[str, object] = {}
    for n, line in enumerate(text.splitlines(), 1):
        where = f"{source}:{n}"
        if n == 1 and line.startswith("\ufeff"):
            line = line[1:]
        body = _strip_comment(line).rstrip()
        if not body.strip() or body.strip() in ("---", "..."):
            continue
        if body[0] in " \t":
            raise ConfigError(f"{where}: nested values are not supported; write flat `key: value` lines")
        if body.startswith("- "):
            raise ConfigError(f"{where}: a list is not a valid configuration; write `key: value` lines")
        m = re.fullmatch(r"""([A-Za-z_][\w.-]*|"[^"]+"|'[^']+')\s*:(?:\s+(.*))?""", body)
        if not m:
            raise ConfigError(f"{where}: expected `key: value`, got {body.strip()!r}")
        key = m.group(1).strip("'\"")
        if key in data:
            raise ConfigError(f"{where}: {key} is given twice")
        value = m.group(2)
        if value is None or not value.strip():
            data[key] = None
            continue
        data[key] = _scalar(value, where)
    return data


def _parse(text: str, source: str) -> dict[str, object]:
    try:
        import yaml  # type: ignore[import-not-found]
    except ImportError:
        return parse_flat_yaml(text, source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of `key: value` lines")
    for key, value in data.items():
        if isinstance(value, dict | list):
            raise ConfigError(f"{source}: {key}: nested values are not supported; "
                              "write flat `key: value` lines")
    return {str(k): v for k, v in data.items()}


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


# ----------------------------------------------------------------------------------------- loading


def _known_keys_text() -> str:
    parts = []
    for key, (_flag, aliases) in KEYS.items():
        parts.append(key + (f" (or {', '.join(aliases)})" if aliases else ""))
    return ", ".join(parts)


def normalize(raw: dict[str, object], source: str = "config") -> dict[str, object]:
    """Resolve aliases to canonical keys and check value types; `None` values are dropped."""
    out: dict[str, object] = {}
    given_as: dict[str, str] = {}
    for key, value in raw.items():
        canon = _ALIASES.get(key) or _ALIASES.get(key.replace("-", "_"))
        if canon is None:
            hint = f" ({_NOT_HERE[key]})" if key in _NOT_HERE else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}. Known keys: {_known_keys_text()}")
        if canon in given_as:
            raise ConfigError(f"{source}: {key} and {given_as[canon]} are the same setting; give it once")
        given_as[canon] = key
        if canon in OPTIONAL_PATH_KEYS and isinstance(value, str) and value.strip() in ("None", "none"):
            value = None
        if value is None:
            continue
        if canon in BOOLEAN_KEYS:
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        elif canon == "log_level":
            if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
                raise ConfigError(f"{source}: log_level must be one of {', '.join(LOG_LEVELS)}, "
                                  f"got {value!r}")
            value = value.upper()
        elif canon == "max_buffer":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ConfigError(f"{source}: max_buffer must be a size such as 256M or 1G, got {value!r}")
            value = str(value)
            try:
                parse_size(value)
            except ValueError as exc:
                raise ConfigError(f"{source}: max_buffer: {exc}") from None
        elif canon == "prefix":
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise ConfigError(f"{source}: prefix must be a string, got {value!r}")
            value = str(value)
        else:
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise ConfigError(f"{source}: {key} must be a path, got {value!r}")
            value = str(value)
        out[canon] = value
    return out


def load_config(path: str | os.PathLike) -> dict[str, object]:
    """Read a transform configuration: canonical key -> value (str, or bool for overwrite/quiet).

    Aliases (src_strategy, dst_checkpoint_dir, MindFormers' src_ckpt_dir ...) are resolved; an unknown
    key is an error listing the known ones, because a misspelt key silently ignored would run a
    different conversion than the one the user wrote down. "None" for an optional path means unset.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror or exc}") from None
    return normalize(_parse(text, path), path)


def default_config_path(cwd: str | os.PathLike | None = None) -> str | None:
    """`./mpitrans.yaml` when it exists (read automatically when --config is not given), else None."""
    path = os.path.join(os.fspath(cwd) if cwd is not None else os.getcwd(), DEFAULT_CONFIG)
    return path if os.path.isfile(path) else None


# ---------------------------------------------------------------------------------------- merging


def _given_on_command_line(argv: Sequence[str]) -> set[str]:
    """Canonical keys that `argv` sets, in any spelling (`--src-strategy X`, `--src_strategy=X`, ...)."""
    spelled = {s: key for key, names in _FLAG_SPELLINGS.items() for s in names}
    given: set[str] = set()
    for tok in argv:
        if tok == "--":
            break
        if not tok.startswith("--"):
            continue
        name = tok[2:].split("=", 1)[0].replace("-", "_")
        if name in spelled:
            given.add(spelled[name])
    return given


def merge_config_with_args(config: dict[str, object], argv: Sequence[str]) -> list[str]:
    """The argv the transform parser should see: the file's settings, then the command line.

    A key is taken from the file only when the command line does not set it in any spelling, so the
    command line always wins (for flags too: `quiet: true` in the file is dropped when the command line
    says --quiet or --no-quiet). Booleans become a bare flag when true and nothing when false.
    """
    config = normalize(config) if any(k not in KEYS for k in config) else config
    given = _given_on_command_line(argv)
    out: list[str] = []
    for key, (flag, _aliases) in KEYS.items():
        if key in given or key not in config:
            continue
        value = config[key]
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        else:
            out += [flag, str(value)]
    return out + list(argv)


def split_config_arg(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Take `--config FILE` / `--config=FILE` out of argv: (FILE or None, the rest)."""
    rest: list[str] = []
    path: str | None = None
    it = iter(range(len(argv)))
    args = list(argv)
    for i in it:
        tok = args[i]
        if tok == "--":
            rest += args[i:]
            break
        if tok == "--config":
            if i + 1 >= len(args):
                raise ConfigError("--config needs a file name")
            path = args[i + 1]
            next(it, None)
        elif tok.startswith("--config="):
            path = tok.split("=", 1)[1]
        else:
            rest.append(tok)
    return path, rest


def apply_config(argv: Sequence[str]) -> list[str]:
    """`--config FILE` (or ./mpitrans.yaml when present) folded into argv for the transform parser.

    The one call the command line needs: `args = parser.parse_args(apply_config(argv))`.
    """
    path, rest = split_config_arg(argv)
    if path is None:
        if any(t in ("-h", "--help") for t in rest):
            return rest
        path = default_config_path()
        if path is None:
            return rest
    return merge_config_with_args(load_config(path), rest)
