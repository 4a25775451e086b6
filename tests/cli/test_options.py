"""The option table: one source for the parsers, the configuration file and the job's defaults."""

from __future__ import annotations

import pytest

from mpitrans.cli import config as cfg
from mpitrans.cli.main import _transform_parser, _verify_parser
from mpitrans.cli.options import OPTIONS, TRANSFORM, VERIFY, option, options_from_args
from mpitrans.errors import UsageError
from mpitrans.job.options import JobOptions

REQUIRED = ["--src-checkpoint", "a", "--dst-checkpoint", "b"]


def test_command_line_defaults_are_the_apis():
    assert options_from_args(_transform_parser().parse_args(REQUIRED)) == JobOptions("a", "b", show_progress=True)
    assert options_from_args(_verify_parser().parse_args(REQUIRED)) == JobOptions("a", "b")
    quiet = options_from_args(_transform_parser().parse_args([*REQUIRED, "--quiet"]))
    assert quiet.show_progress is False and quiet.overwrite is False and quiet.strict is True


@pytest.mark.parametrize(("command", "parser"), [(TRANSFORM, _transform_parser), (VERIFY, _verify_parser)])
def test_help_lists_every_spelling(command, parser):
    text = parser().format_help().replace("\n", " ")
    for o in OPTIONS:
        for flag in o.flags + o.negatives:
            if command in o.commands:
                assert f"{flag}," in text or f"{flag} " in text, flag
            else:
                with pytest.raises(UsageError):
                    parser().parse_args([*REQUIRED, flag, "x"])


SPELLINGS = {
    "src_checkpoint": ["--src-checkpoint", "--src_checkpoint", "--src_ckpt_dir", "--src-ckpt-dir"],
    "src_strategy": ["--src-strategy", "--src_strategy", "--src_ckpt_strategy", "--src-ckpt-strategy",
                     "--src_strategy_path_or_dir"],
    "dst_checkpoint": ["--dst-checkpoint", "--dst_checkpoint", "--dst_checkpoint_dir", "--dst-checkpoint-dir",
                       "--dst_ckpt_dir", "--dst-ckpt-dir"],
    "dst_strategy": ["--dst-strategy", "--dst_strategy", "--dst_ckpt_strategy", "--dst-ckpt-strategy"],
    "rank_table": ["--rank-table", "--rank_table", "--rank_table_file"],
    "json_summary": ["--json-summary", "--json_summary"],
    "log_level": ["--log-level", "--log_level"],
}


@pytest.mark.parametrize("dest", sorted(SPELLINGS))
def test_mindspore_and_mindformers_spellings(dest):
    value = "DEBUG" if dest == "log_level" else "x"
    for flag in SPELLINGS[dest]:
        args = _transform_parser().parse_args([*REQUIRED, flag, value])
        assert getattr(args, dest) == value, flag
        assert args.max_buffer == option("max_buffer").default == JobOptions("a", "b").max_buffer
    assert _transform_parser().parse_args([*REQUIRED, "--max_buffer", "1G"]).max_buffer == "1G"


def test_switches_can_be_undone_on_the_command_line(tmp_path):
    args = _transform_parser().parse_args([*REQUIRED, "--overwrite", "--no-overwrite", "--dry_run"])
    assert (args.overwrite, args.dry_run) == (False, True)
    path = tmp_path / "t.yaml"
    path.write_text("overwrite: true\ndry_run: true\nresume: true\nquiet: true\n")
    argv = cfg.apply_config(["--config", str(path), *REQUIRED, "--no-dry-run", "--no-quiet"])
    opts = options_from_args(_transform_parser().parse_args(argv))
    assert (opts.overwrite, opts.resume, opts.dry_run, opts.show_progress) == (True, True, False, True)


def test_file_keys_come_from_the_table():
    assert cfg.KEYS[:4] == ("src_checkpoint", "src_strategy_path_or_dir", "dst_checkpoint", "dst_strategy")
    assert {"dry_run", "resume", "json", "log_level"} <= set(cfg.KEYS)
    assert "config" not in cfg.KEYS and "debug" not in cfg.KEYS
    assert cfg.merge_config_with_args({"dry_run": True, "json": True, "resume": False}, []) == ["--dry-run", "--json"]


def test_a_bad_size_names_the_flag():
    with pytest.raises(UsageError, match="--max-buffer: '0' is not a positive size") as err:
        options_from_args(_transform_parser().parse_args([*REQUIRED, "--max_buffer", "0"]))
    assert err.value.exit_code == 2
