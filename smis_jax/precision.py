"""One precision policy for float32 matmuls and convolutions, and what the machine was.

On CPUs XLA computes float32 matmuls and convolutions in float32 whatever the setting, but on recent NVIDIA GPUs
its default is TF32 (10-bit mantissa) and on TPUs bfloat16 passes: parity with the original and the labels would
then depend on the card. Training, inversion, labelling and evaluation therefore run under one setting,
``--precision`` (``TrainConfig.precision``, default ``highest``: full float32 everywhere, what the parity tests
use), applied by the command-line tools with :func:`policy` (``jax.default_matmul_precision``) and recorded in the
run's ``config.json``. An operation that names its own precision keeps it (the labelling's cosine similarities
are always ``HIGHEST``).

``tensorfloat32`` (XLA's ``HIGH``: TF32 or three bfloat16 passes, by card) trades accuracy for speed; ``default``
(XLA's ``DEFAULT``: TF32 on recent NVIDIA cards, one bfloat16 pass on TPUs) is the behaviour before this setting
existed. On XLA:CPU all three compute the same float32 results. ``bench/gpu.sh`` measures how often labels agree
between them on a card.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any, Iterator

from smis_jax.errors import InvalidValueError

__all__ = ["PRECISIONS", "DEFAULT", "check", "policy", "machine"]

PRECISIONS = ("highest", "tensorfloat32", "default")
DEFAULT = "highest"


def check(value: str, what: str = "precision") -> str:
    """``value`` if it is one of :data:`PRECISIONS`, else one InvalidValueError line naming it."""
    if value not in PRECISIONS:
        raise InvalidValueError(f"{what} must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


@contextlib.contextmanager
def policy(value: str | None) -> Iterator[str]:
    """Run the block (tracing and compiling included) with float32 matmuls/convolutions at ``value``
    (None: :data:`DEFAULT`). Jitted functions are cached per setting, so one process can use several."""
    import jax  # here, not at the top: config.py imports this module, and `--help` should not wait for JAX

    value = check(DEFAULT if value is None else value)
    if value == "default":
        with jax.default_matmul_precision(None):
            yield value
    else:
        with jax.default_matmul_precision(value):
            yield value


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, Any]:
    """The host beside the versions and devices a run records: CPU model, logical CPUs, the CPUs this process may
    use, and the thread settings that change XLA:CPU's summation order (an empty dict when unset)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    env = {k: os.environ[k] for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "JAX_PLATFORMS") if k in os.environ}
    return {"cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "cpu_threads_usable": usable,
            "platform": platform.platform(), "env": env}
