"""`just bench`: the benchmark suite (see docs/benchmarks.md for what it measures)."""
