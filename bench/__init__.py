"""Benchmarks: every target is a ratio of two things measured side by side in the same run."""
