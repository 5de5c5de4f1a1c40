"""Benchmarks: `python -m bench` prints the README's table."""
