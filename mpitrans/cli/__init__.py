"""The command line: `python -m mpitrans [subcommand] ...`, normally under mpirun.

* `main`: subcommands, one-line errors, agreement across ranks on what is wrong;
* `config`: options from a YAML file with MindFormers' key names;
* `rank_table`: the `rank-table` subcommand (HCCL rank tables, hostfiles), over `mpitrans.cluster`.
"""

from mpitrans.cli.main import check_output_dir, main, parse_size, take_flag

__all__ = ["check_output_dir", "main", "parse_size", "take_flag"]
