"""Benchmarks of the original's paths beside ours (issue #4); ``python -m smis_jax.bench --help``."""

from smis_jax.bench.cli import *  # noqa: F401,F403
from smis_jax.bench.cli import __all__, main  # noqa: F401
