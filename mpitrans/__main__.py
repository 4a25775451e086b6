"""`python -m mpitrans`: see `mpitrans.cli`."""

import sys

try:
    from mpitrans.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python was still loading us: nothing started, say so in one line
    sys.stderr.write("mpitrans: interrupted by SIGINT while starting; nothing was done\n")
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
