"""Benchmarks of the harness: each figure is a ratio of two ways of doing the same work,
measured in the same run, so that a noisy shared machine moves both sides alike.

Run ``python -m bench`` (see ``python -m bench --help`` and BENCHMARKS.md).
"""
