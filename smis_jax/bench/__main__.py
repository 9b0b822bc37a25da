"""``python -m smis_jax.bench``: see :mod:`smis_jax.bench.cli`."""

import sys

from smis_jax.bench.cli import main

sys.exit(main())
