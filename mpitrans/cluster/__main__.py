"""`python -m mpitrans.cluster ...` is `python -m mpitrans rank-table ...` without the transform's CLI
(the launch scripts call it before `mpirun`); see `mpitrans.cli.rank_table`."""

import sys

from mpitrans.cli.rank_table import main

sys.exit(main())
