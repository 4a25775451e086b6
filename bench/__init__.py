"""Benchmark of mpitrans against MindSpore's checkpoint transforms: `python -m bench --help`."""
