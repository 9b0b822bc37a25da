"""Shared test set-up: two forced CPU devices (real data-parallel runs), full fp32 matmuls, golden paths."""

import contextlib
import os
import signal
import tempfile
from pathlib import Path

# Must happen before jax is imported anywhere: every test process (and the CLIs the tests start) sees two CPU
# devices, so multi-device code paths run for real, and single-device tests simply use the first.
# (--xla_backend_optimization_level=0 would cut compile times by a third but makes the LPIPS backward pass of
# the inversion about 100x slower on XLA:CPU.)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache per test session, shared by the xdist workers and the CLIs the tests start: a
# resumed run, an evaluation or a replay compiles what an earlier process already compiled, so it is loaded instead.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # the same in every worker of one session
if _RUN:
    _CACHE = Path(tempfile.gettempdir()) / f"smis-jax-xla-cache-{_RUN}"
    _CACHE.mkdir(exist_ok=True)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="smis-jax-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

# A test session started in the background of a shell script (`cmd &`) ignores SIGINT, and an ignored signal stays
# ignored in every process it starts: the Ctrl-C tests' programs would never see their SIGINT. Handle it here; the
# programs the tests start then get the default disposition, as they would from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Parity tests compare float32 results with PyTorch's; no reduced-precision matmuls (TF32/bf16) anywhere.
jax.config.update("jax_default_matmul_precision", "highest")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SMIS_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
SAMPLES = SHARED / "samples"


@pytest.fixture(scope="session")
def golden() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"golden files not found at {GOLDEN} (set SMIS_SHARED to the shared/ folder)")
    return GOLDEN


@pytest.fixture(scope="session")
def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.fail(f"sample data not found at {SAMPLES} (set SMIS_SHARED to the shared/ folder)")
    return SAMPLES


def rel_err(actual, expected) -> float:
    """max|a-b| / max|b|: the golden README's measure for forward passes (< 1e-4) and gradients (< 1e-3)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


# Tolerances from golden/README.md, stated once.
FORWARD_TOL = 1e-4
GRAD_TOL = 1e-3


_TRACES = [0]  # every jaxpr trace of this process, counted through JAX's public monitoring events


def _on_event(event: str, _duration: float, **_) -> None:
    if event == "/jax/core/compile/jaxpr_trace_duration":
        _TRACES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


@contextlib.contextmanager
def count_traces():
    """``with count_traces() as traced: ...; traced()`` is how many functions JAX traced inside the block (its public
    monitoring events, not jit's private cache): 0 when every call reused a compiled function."""
    start = _TRACES[0]
    yield lambda: _TRACES[0] - start
