"""What smis-jax runs on: the JAX backend and devices, the versions of JAX and its companions, and whether each
installed runtime dependency lies in the range pyproject.toml declares (the versions CI tests).

    python -m smis_jax.info                       # prints the report
    python -m smis_jax.info --expect-backend gpu  # the same; exit status 1 unless JAX's backend is gpu

``train.run`` logs :func:`summary` at start-up and writes :func:`versions` and the backend into config.json.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

# The packages whose versions a run records: JAX and what rides on it.
CORE = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
# Distributions that bring JAX an accelerator (CUDA, ROCm, TPU); listed when installed.
_PLUGIN = re.compile(r"^(jax[-_](cuda|rocm)\d*[-_](plugin|pjrt)|libtpu(-nightly)?|jax[-_]tpu)$", re.I)
_OPS = {">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "==": lambda a, b: a == b,
        "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "!=": lambda a, b: a != b}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version ('0.12.0.1' -> (0, 12, 0, 1), '2.13.0+cpu' -> (2, 13, 0)), zero-padded."""
    m = re.match(r"\d+(\.\d+)*", version)
    nums = tuple(int(x) for x in m.group(0).split(".")) if m else ()
    return nums + (0,) * (6 - len(nums))


def in_range(version: str, spec: str) -> bool | None:
    """Whether ``version`` satisfies ``spec`` (clauses such as '>=0.10.2,<0.13' or '==0.1.0', comparing release
    numbers); None where a clause uses an operator this reader does not know."""
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = re.fullmatch(r"(>=|<=|==|!=|<|>)\s*([\d.]+)", clause)
        if m is None:
            return None
        if not _OPS[m.group(1)](_release(version), _release(m.group(2))):
            return False
    return True


def declared() -> dict[str, str]:
    """name -> version range of every runtime dependency, as the installed smis-jax declares it ({} when smis-jax
    is imported from a source tree that was never installed)."""
    try:
        reqs = metadata.requires("smis-jax") or []
    except metadata.PackageNotFoundError:
        return {}
    out = {}
    for req in reqs:
        if ";" in req:  # an extra's requirement (torch, pytest): not a runtime dependency
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*\(?([^)]*)\)?", req)
        if m:
            out[m.group(1)] = m.group(2).replace(" ", "")
    return out


def versions() -> dict[str, str | None]:
    """Python and the core packages' installed versions (None: not installed), as config.json records them."""
    return {"python": platform.python_version(), **{name: _version(name) for name in CORE}}


def plugins() -> dict[str, str]:
    """Installed accelerator plugins of JAX (jax-cuda12-plugin, libtpu, ...) -> version."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] or ""
        if _PLUGIN.match(name):
            found[name] = dist.version
    return dict(sorted(found.items()))


def backend() -> dict[str, object]:
    """JAX's default backend, its devices (kinds and count) and the platform's own version string."""
    import jax

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    try:
        platform_version = str(devices[0].client.platform_version).strip().splitlines()[-1]
    except Exception:  # not every backend exposes it; the report does without
        platform_version = None
    return {"backend": jax.default_backend(), "devices": len(devices), "device_kinds": kinds,
            "platform_version": platform_version}


def out_of_range() -> list[str]:
    """One line per installed runtime dependency outside its declared range (or missing)."""
    problems = []
    for name, spec in declared().items():
        have = _version(name)
        if have is None:
            problems.append(f"{name} is not installed (smis-jax needs {name}{spec})")
        elif spec and in_range(have, spec) is False:
            problems.append(f"{name} {have} is outside the tested range {name}{spec}")
    return problems


def summary() -> str:
    """One line: backend, devices, JAX and its companions, Python (train.run prints it at start-up)."""
    b, v = backend(), versions()
    kinds = ", ".join(b["device_kinds"])
    parts = [f"jax {v['jax']} (jaxlib {v['jaxlib']})", f"backend {b['backend']}: {b['devices']} device(s) ({kinds})"]
    parts += [", ".join(f"{n} {v[n]}" for n in ("flax", "optax", "orbax-checkpoint", "numpy"))]
    return "; ".join(parts) + f"; Python {v['python']}"


def report() -> list[str]:
    b, v = backend(), versions()
    lines = [f"smis-jax {_version('smis-jax') or '(not installed)'} ({Path(__file__).parent})",
             f"Python {v['python']} ({sys.executable})",
             f"jax {v['jax']}, jaxlib {v['jaxlib']}",
             f"backend: {b['backend']}, {b['devices']} device(s): {', '.join(b['device_kinds'])}"
             + (f" ({b['platform_version']})" if b["platform_version"] not in (None, b["backend"]) else "")]
    plug = plugins()
    lines.append("accelerator plugins: " + (", ".join(f"{n} {ver}" for n, ver in plug.items()) or "none"))
    lines.append(", ".join(f"{n} {v[n]}" for n in ("flax", "optax", "orbax-checkpoint", "numpy")))
    problems = out_of_range()
    if not declared():
        lines.append("tested ranges: unknown (smis-jax is not installed: pip install -e .)")
    elif problems:
        lines += [f"warning: {p}" for p in problems]
    else:
        lines.append("every runtime dependency is in the range smis-jax declares (the versions CI tests)")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m smis_jax.info", description=__doc__.split("\n\n")[0])
    p.add_argument("--expect-backend", metavar="NAME", choices=("cpu", "gpu", "tpu"),
                   help="exit with status 1 unless JAX's default backend is NAME (cpu, gpu or tpu)")
    args = p.parse_args(argv)
    for line in report():
        print(line)
    if args.expect_backend:
        found = backend()["backend"]
        if found != args.expect_backend:
            print(f"error: JAX's backend is {found}, expected {args.expect_backend} (is jax installed for it? "
                  f"see README, 'Install next to an accelerator's JAX')", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
