"""Benchmarking: the shared timing harness, device facts and reports."""
