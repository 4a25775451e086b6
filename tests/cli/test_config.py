"""`--config transform.yaml`: flat YAML, MindFormers key names, command line wins."""

from __future__ import annotations

import pytest

from mpitrans.cli import config as cfg
from mpitrans.cli.config import ConfigError
from mpitrans.errors import MpitransError

STRATEGY = "/worker/checkpoint/llama-7b/multi_dp2mp1pp4/strategy/merged_ckpt_strategy.ckpt"
FULL = """\
# MindFormers-style offline conversion
---
src_checkpoint: /worker/checkpoint/llama-7b/multi_dp2mp1pp4/   # model_dir
src_strategy_path_or_dir: "/worker/checkpoint/llama-7b/multi_dp2mp1pp4/strategy/merged_ckpt_strategy.ckpt"
dst_checkpoint: '/worker/transform ckpt/llama3_8b_1to8/'
dst_strategy: /worker/mindformers/output/strategy/
prefix: "checkpoint_"
max_buffer: 1G
rank_table: rank_tables/hccl_16p_2s_192.168.1.196_192.168.1.197.json
json_summary: summary.json
overwrite: true
quiet: False
log_level: debug
"""


def write(tmp_path, text: str, name: str = "transform.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_all_keys(tmp_path):
    c = cfg.load_config(write(tmp_path, FULL))
    assert c == {
        "src_checkpoint": "/worker/checkpoint/llama-7b/multi_dp2mp1pp4/",
        "src_strategy_path_or_dir": STRATEGY,
        "dst_checkpoint": "/worker/transform ckpt/llama3_8b_1to8/",
        "dst_strategy": "/worker/mindformers/output/strategy/",
        "prefix": "checkpoint_",
        "max_buffer": "1G",
        "rank_table": "rank_tables/hccl_16p_2s_192.168.1.196_192.168.1.197.json",
        "json_summary": "summary.json",
        "overwrite": True,
        "quiet": False,
        "log_level": "DEBUG",
    }
    argv = cfg.merge_config_with_args(c, [])
    assert argv == [
        "--src-checkpoint", "/worker/checkpoint/llama-7b/multi_dp2mp1pp4/",
        "--src-strategy", STRATEGY,
        "--dst-checkpoint", "/worker/transform ckpt/llama3_8b_1to8/",
        "--dst-strategy", "/worker/mindformers/output/strategy/",
        "--prefix", "checkpoint_",
        "--max-buffer", "1G",
        "--rank-table", "rank_tables/hccl_16p_2s_192.168.1.196_192.168.1.197.json",
        "--json-summary", "summary.json",
        "--overwrite",
        "--log-level", "DEBUG",
    ]


def test_transform_parser_accepts_the_generated_flags(tmp_path):
    from mpitrans.cli.main import _transform_parser

    c = cfg.load_config(write(tmp_path, "src_checkpoint: a\nsrc_strategy: s.ckpt\ndst_checkpoint_dir: b\n"
                                        "max_buffer: 65536\nquiet: yes\nprefix: ck_\n"))
    args = _transform_parser().parse_args(cfg.merge_config_with_args(c, ["--prefix", "cli_"]))
    assert (args.src_checkpoint, args.src_strategy, args.dst_checkpoint) == ("a", "s.ckpt", "b")
    assert args.max_buffer == "65536" and args.quiet is True and args.prefix == "cli_"


def test_aliases(tmp_path):
    c = cfg.load_config(write(tmp_path, "src_ckpt_dir: a\nsrc_strategy: s\ndst_checkpoint_dir: d\n"
                                        "dst_ckpt_strategy: ds\nrank_table_file: t.json\n"))
    assert c == {"src_checkpoint": "a", "src_strategy_path_or_dir": "s", "dst_checkpoint": "d",
                 "dst_strategy": "ds", "rank_table": "t.json"}
    with pytest.raises(ConfigError, match="src_strategy_path_or_dir and src_strategy are the same setting"):
        cfg.load_config(write(tmp_path, "src_strategy: a\nsrc_strategy_path_or_dir: b\n"))


def test_none_means_unset_like_mindformers(tmp_path):
    c = cfg.load_config(write(tmp_path, "src_checkpoint: full.ckpt\nsrc_strategy: None\ndst_strategy: ~\n"
                                        "json_summary:\ndst_checkpoint: out\n"))
    assert c == {"src_checkpoint": "full.ckpt", "dst_checkpoint": "out"}


def test_unknown_key_lists_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'src_chekpoint'") as err:
        cfg.load_config(write(tmp_path, "src_chekpoint: a\n"))
    for key in cfg.KEYS:
        assert key in str(err.value)
    assert isinstance(err.value, MpitransError)
    with pytest.raises(ConfigError, match="load_checkpoint.*src_checkpoint"):
        cfg.load_config(write(tmp_path, "load_checkpoint: a\n"))


@pytest.mark.parametrize(("text", "message"), [
    ("quiet: maybe\n", "quiet must be true or false"),
    ("log_level: loud\n", "log_level must be one of"),
    ("src_checkpoint: true\n", "must be a path"),
    ("parallel:\n  data_parallel: 2\n", r"transform\.yaml:2: nested values are not supported"),
    ("- a\n- b\n", "a list is not a valid configuration"),
    ("prefix: [a, b]\n", "only plain scalars"),
    ("prefix: a\nprefix: b\n", r"transform\.yaml:2: prefix is given twice"),
    ("prefix 'a'\n", r"expected `key: value`"),
    ('prefix: "abc\n', "unterminated double-quoted"),
    ("max_buffer: abc\n", r"transform\.yaml: max_buffer: 'abc' is not a size; give a positive number"),
    ("max_buffer: -5\n", r"max_buffer: '-5' is not a positive size.*64M, 1\.5G"),
    ("max_buffer: 0\n", "max_buffer: '0' is not a positive size"),
    ("max_buffer: 0.1\n", "max_buffer: '0.1' is not a positive size"),
])
def test_bad_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        cfg.load_config(write(tmp_path, text))


def test_scalars():
    parse = cfg.parse_flat_yaml
    got = parse("a: 12\nb: -3\nc: 1.5\nd: 'it''s'\ne: \"x # not a comment\" # comment\nf: a#b\ng: Off\n"
                "h: NULL\ni: \"tab\\tq\\\"\"\nj: 08\nk: 1_000\n")
    assert got == {"a": 12, "b": -3, "c": 1.5, "d": "it's", "e": "x # not a comment", "f": "a#b", "g": False,
                   "h": None, "i": 'tab\tq"', "j": "08", "k": 1000}
    assert parse("# only comments\n\n---\n...\n") == {}
    assert parse("\ufeffprefix: x\r\n") == {"prefix": "x"}


def test_command_line_wins_in_every_spelling(tmp_path):
    c = cfg.load_config(write(tmp_path, FULL))
    for argv in (["--src-strategy", "cli.ckpt"], ["--src_strategy", "cli.ckpt"], ["--src_strategy=cli.ckpt"],
                 ["--src_strategy_path_or_dir", "cli.ckpt"], ["--src-ckpt-strategy=cli.ckpt"]):
        out = cfg.merge_config_with_args(c, argv)
        assert out[-len(argv):] == argv
        assert "--src-strategy" not in out[:-len(argv)]
        assert out.count("--dst-checkpoint") == 1
    out = cfg.merge_config_with_args(c, ["--dst_ckpt_dir", "x", "--log_level", "ERROR", "--no-overwrite"])
    assert "--dst-checkpoint" not in out and "--log-level" not in out and "--overwrite" not in out
    # Values that look like flags after `--` are not options.
    after_dashes = cfg.merge_config_with_args({"prefix": "p"}, ["--", "--prefix"])
    assert after_dashes == ["--prefix", "p", "--", "--prefix"]
    # Aliases in a hand-made dict are resolved too.
    assert cfg.merge_config_with_args({"src_strategy": "s"}, []) == ["--src-strategy", "s"]


def test_apply_config_and_default_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cfg.default_config_path() is None
    assert cfg.apply_config(["--prefix", "p"]) == ["--prefix", "p"]
    path = write(tmp_path, "src_checkpoint: a\ndst_checkpoint: b\n", "other.yaml")
    assert cfg.split_config_arg(["--config", path, "--quiet"]) == (path, ["--quiet"])
    assert cfg.apply_config(["--config", path, "--dst-checkpoint", "c"]) == [
        "--src-checkpoint", "a", "--dst-checkpoint", "c"]
    assert cfg.apply_config([f"--config={path}"]) == ["--src-checkpoint", "a", "--dst-checkpoint", "b"]
    write(tmp_path, "prefix: from_default_\n", cfg.DEFAULT_CONFIG)
    assert cfg.default_config_path() == str(tmp_path / "mpitrans.yaml")
    assert cfg.apply_config(["--quiet"]) == ["--prefix", "from_default_", "--quiet"]
    assert cfg.apply_config(["--help"]) == ["--help"]
    with pytest.raises(ConfigError, match="needs a file"):
        cfg.apply_config(["--config"])
    with pytest.raises(ConfigError, match="cannot read"):
        cfg.apply_config(["--config", str(tmp_path / "absent.yaml")])


def test_sizes():
    assert [cfg.parse_size(s) for s in ("65536", "64M", "64m", "1.5G", "64KiB", "2 MB", ".5K", "1T", 4096)] == [
        65536, 64 << 20, 64 << 20, 3 << 29, 64 << 10, 2 << 20, 512, 1 << 40, 4096]
    for bad in ("abc", "", "-5", "0", "0.4", "1e3", "nan", "5X", "M", "--1"):
        with pytest.raises(ValueError, match="positive number of bytes, optionally with a unit K, M, G or T"):
            cfg.parse_size(bad)
    # a valid size from the file reaches the command line as written
    assert cfg.normalize({"max_buffer": 1.5}) == {"max_buffer": "1.5"}
