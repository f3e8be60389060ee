"""Measured comparisons (python -m benchmarks): ratios against a baseline from the same run."""
