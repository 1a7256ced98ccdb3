"""Benchmarks behind `hvsim bench NAME`.

Each module `bench/<name>.py` offers `run(*, quick: bool) -> dict` returning a JSON-able result
with its measured numbers and the ratios against baselines measured in the same run, and prints
a table of them. `hvsim bench NAME --json FILE` writes that dict.
"""
