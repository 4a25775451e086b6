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

from mpitrans.cli.options import NOT_OPTIONS, Option, by_file_key, dest_of_flag, file_options, option, parse_size
from mpitrans.errors import MpitransError

DEFAULT_CONFIG = "mpitrans.yaml"


class ConfigError(MpitransError):
    """The configuration file is unreadable, not flat YAML, or has an unknown or ill-typed key."""

    exit_code = 2  # like a bad command line: the job was never described correctly


# The configuration-file keys, canonical spellings, in the order their flags are written (from the table).
KEYS: tuple[str, ...] = tuple(o.key for o in file_options() if o.key is not None)


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


# ----------------------------------------------------------------------------------------- loading


def _known_keys_text() -> str:
    parts = []
    for o in file_options():
        aliases = o.keys[1:]
        parts.append(o.keys[0] + (f" (or {', '.join(aliases)})" if aliases else ""))
    return ", ".join(parts)


def _path(o: Option, key: str, value: object, source: str) -> object:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigError(f"{source}: {key} must be a path, got {value!r}")
    return str(value)


def _text(o: Option, key: str, value: object, source: str) -> object:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
    return str(value)


def _size(o: Option, key: str, value: object, source: str) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{source}: {key} must be a size such as 256M or 1G, got {value!r}")
    try:
        parse_size(str(value))
    except ValueError as exc:
        raise ConfigError(f"{source}: {key}: {exc}") from None
    return str(value)  # checked here, parsed with the command line's value


def _switch(o: Option, key: str, value: object, source: str) -> object:
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
    return value


def _choice(o: Option, key: str, value: object, source: str) -> object:
    if not isinstance(value, str) or o.pick(value) not in o.choices:
        raise ConfigError(f"{source}: {key} must be one of {', '.join(o.choices)}, got {value!r}")
    return o.pick(value)


# How a file's value is checked, by the kind of its option; each returns what is written after its flag.
_READERS = {"path": _path, "text": _text, "patterns": _text, "size": _size, "switch": _switch, "flag": _switch,
            "choice": _choice}


def normalize(raw: dict[str, object], source: str = "config") -> dict[str, object]:
    """Resolve aliases to canonical keys and check value types; `None` values are dropped.

    "None" for an optional path means unset, as MindFormers writes `--src_ckpt_strategy None`."""
    out: dict[str, object] = {}
    given_as: dict[str, str] = {}
    for key, value in raw.items():
        o = by_file_key(key)
        if o is None:
            hint = f" ({NOT_OPTIONS[key]})" if key in NOT_OPTIONS else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}. Known keys: {_known_keys_text()}")
        if o.key in given_as:
            raise ConfigError(f"{source}: {key} and {given_as[o.key]} are the same setting; give it once")
        given_as[o.key] = key
        optional = o.kind == "path" and not o.required
        if optional and isinstance(value, str) and value.strip() in ("None", "none"):
            value = None
        if value is not None:
            out[o.key] = _READERS[o.kind](o, key, value, source)
    return out


def load_config(path: str | os.PathLike) -> dict[str, object]:
    """Read a transform configuration: canonical key -> value (str, or bool for a switch such as overwrite).

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
    """Settings that `argv` sets, in any spelling (`--src-strategy X`, `--src_strategy=X`, `--no-quiet`)."""
    given: set[str] = set()
    for tok in argv:
        if tok == "--":
            break
        dest = dest_of_flag(tok[2:].split("=", 1)[0]) if tok.startswith("--") else None
        if dest is not None:
            given.add(dest)
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
    for o in file_options():
        value = config.get(o.key) if o.key is not None and o.dest not in given else None
        if value is None or value is False:
            continue
        out += [o.flags[0]] if value is True else [o.flags[0], str(value)]
    return out + list(argv)


def split_config_arg(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Take `--config FILE` / `--config=FILE` out of argv: (FILE or None, the rest)."""
    flags = option("config").flags
    rest: list[str] = []
    path: str | None = None
    it = iter(range(len(argv)))
    args = list(argv)
    for i in it:
        tok = args[i]
        if tok == "--":
            rest += args[i:]
            break
        if tok in flags:
            if i + 1 >= len(args):
                raise ConfigError(f"{tok} needs a file name")
            path = args[i + 1]
            next(it, None)
        elif tok.split("=", 1)[0] in flags:
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
