"""mpitrans: reshard MindSpore distributed checkpoints with MPI."""

__version__ = "0.1.0"
