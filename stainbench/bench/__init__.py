"""Benchmarks: quality, latency and the comparison report of served models."""
