"""Benchmarks run by `make bench`: each compares with a peer or a physical limit in one run."""
