"""Synthetic data for tests, benchmarks and the trained test fixture."""
