"""`python -m mpitrans`: see `mpitrans.cli`."""

import sys

from mpitrans.cli import main

sys.exit(main())
