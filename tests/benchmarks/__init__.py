"""Tests of the benchmarks (structure and integrity checks only, never timings)."""
