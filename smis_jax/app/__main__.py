import sys

from smis_jax.app import main

sys.exit(main())
