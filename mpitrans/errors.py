"""Error types shared by every layer.

One base class lets the command line and the MPI driver tell expected user-facing failures (bad files,
bad strategies, missing shards) from programming errors, and report them as one clear line.
"""

from __future__ import annotations


class MpitransError(Exception):
    """Base for every error that should reach the user as a one-line message."""


class CheckpointFormatError(MpitransError):
    """A .ckpt file is truncated, corrupt, encrypted or otherwise not a MindSpore checkpoint stream."""


class UnsupportedError(MpitransError):
    """The input is valid MindSpore data that mpitrans deliberately does not handle (string values, MapTensor)."""


class StrategyError(MpitransError):
    """A strategy file is missing, unreadable, or describes an impossible layout."""


class LayoutError(MpitransError):
    """A parameter's layout cannot be resharded exactly (uneven split, shape not divisible, ...)."""


class MissingShardError(MpitransError):
    """A source shard needed by some target is visible to no process."""


class UsageError(MpitransError):
    """The command line itself is wrong: an unknown flag, a missing or ill-formed value."""

    exit_code = 2  # argparse's convention for a command line it cannot use
