"""The command line: `python -m mpitrans [subcommand] ...`, normally under mpirun.

* `options`: the one table of options (every flag spelling, file key, help text), from which the
  parsers, the YAML reader and the job's `JobOptions` are derived; defaults are `JobOptions`' own;
* `main`: subcommands, one-line errors, agreement across ranks on what is wrong, `--dry-run`;
* `config`: options from a YAML file with MindFormers' key names;
* `rank_table`: the `rank-table` subcommand (HCCL rank tables, hostfiles), over `mpitrans.cluster`.
"""

from mpitrans.cli.main import check_output_dir, main, parse_size, take_flag

__all__ = ["check_output_dir", "main", "parse_size", "take_flag"]
