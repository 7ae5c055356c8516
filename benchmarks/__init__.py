"""Benchmarks and experiments over odediff, run as `python -m benchmarks.<name>`."""
