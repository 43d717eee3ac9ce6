"""Benchmarks of keras_fmicl (run as scripts; see benchmarks/README.md)."""
