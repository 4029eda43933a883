"""Benchmarks behind `partial-fc bench ...`: each module has a run(...) that prints a table or JSON."""
