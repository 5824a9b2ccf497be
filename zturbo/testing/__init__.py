"""Test fixtures shared by the tests and benchmarks: tiny files written in the real layouts."""
