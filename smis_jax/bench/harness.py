"""The measuring part of the benchmarks: devices and their peak FLOP/s, peak memory, FLOP counts (XLA's cost
model or the jaxpr), and the timing protocol (warm every path up, then let the paths take turns)."""

from __future__ import annotations

import ctypes
import math
import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
from jax.extend.core import jaxprs_in_params

__all__ = ["PEAK_FLOPS", "device_info", "peak_flops", "Memory", "flops_of", "jaxpr_flops", "xla_bytes",
           "TimedPath", "measure", "median", "aot_compile", "check_fits", "result_row", "host_context"]

# Dense (no sparsity) peak FLOP/s per device from vendor datasheets, by the dtype the benchmark runs in. On
# NVIDIA Ampere/Hopper XLA runs float32 matmuls and convolutions as TF32 on the tensor cores by default, so the
# TF32 peak is the ceiling for float32; on TPUs the default float32 precision is one bfloat16 pass, so both
# dtypes share the bfloat16 peak. Keys are matched as substrings of ``device.device_kind``, first match wins.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"float32": 378e12, "bfloat16": 756e12}),
    ("H100", {"float32": 494.7e12, "bfloat16": 989.4e12}),  # SXM
    ("H200", {"float32": 494.7e12, "bfloat16": 989.4e12}),
    ("A100", {"float32": 156e12, "bfloat16": 312e12}),
    ("L4", {"float32": 60e12, "bfloat16": 121e12}),
    ("V100", {"float32": 15.7e12}),  # no TF32, no bfloat16 tensor cores
    ("T4", {"float32": 8.1e12}),
    ("TPU v4", {"float32": 275e12, "bfloat16": 275e12}),
    ("TPU v5 lite", {"float32": 197e12, "bfloat16": 197e12}),
    ("TPU v5e", {"float32": 197e12, "bfloat16": 197e12}),
    ("TPU v5p", {"float32": 459e12, "bfloat16": 459e12}),
    ("TPU v5", {"float32": 459e12, "bfloat16": 459e12}),
    ("TPU v6 lite", {"float32": 918e12, "bfloat16": 918e12}),
    ("TPU v6e", {"float32": 918e12, "bfloat16": 918e12}),
)


def device_info() -> dict[str, Any]:
    d = jax.devices()[0]
    return {"device": f"{d.platform}:{d.device_kind}", "platform": d.platform, "device_kind": d.device_kind,
            "device_count": jax.device_count(), "cpu_count": os.cpu_count(), "jax": jax.__version__}


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """The device's dense peak FLOP/s for ``dtype`` (None when unknown, e.g. every CPU)."""
    for key, peaks in PEAK_FLOPS:
        if key.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


class Memory:
    """Peak memory of one measured call: the device allocator's high-water mark where the backend has one,
    else the process's peak RSS (VmHWM, reset through /proc/self/clear_refs before the call)."""

    def __init__(self):
        stats = jax.devices()[0].memory_stats() or {}
        self.device = "peak_bytes_in_use" in stats
        self._libc = None
        try:
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            pass
        self.can_reset = False
        if not self.device:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.can_reset = _status_kb("VmHWM") is not None
            except OSError:
                pass

    @property
    def source(self) -> str:
        if self.device:
            return "device memory_stats peak_bytes_in_use (high-water mark of the whole process so far)"
        if self.can_reset:
            return "process peak RSS (VmHWM, reset before the call; includes the baseline)"
        return "process max RSS (ru_maxrss since the process started)"

    def reset(self) -> int | None:
        """Start a measurement; returns the baseline (bytes in use now)."""
        if self.device:
            return int(jax.devices()[0].memory_stats().get("bytes_in_use", 0))
        if self._libc is not None:
            self._libc.malloc_trim(0)  # hand freed buffers back so the baseline is what is really alive
        if self.can_reset:
            Path("/proc/self/clear_refs").write_text("5")
            return _status_kb("VmRSS") * 1024
        return None

    def peak(self) -> int:
        if self.device:
            return int(jax.devices()[0].memory_stats()["peak_bytes_in_use"])
        if self.can_reset:
            return _status_kb("VmHWM") * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status_kb(field: str) -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


# ---------------------------------------------------------------------------------------------------------------
# FLOPs.

def flops_of(compiled, fn: Callable, *args) -> tuple[float | None, str]:
    """(FLOPs of one call, where the number comes from): XLA's cost model, except for programs with loops, which
    it counts once (the chunked sparse labelling is a ``lax.map``): those, and backends without a cost model, get
    the jaxpr count, which multiplies a scan body by its length."""
    xla = _cost_flops(compiled)
    try:
        analytic, loops = _jaxpr_count(fn, *args)
    except Exception:  # a primitive the counter cannot walk: XLA's number alone
        analytic, loops = None, False
    if xla is not None and not (loops and analytic):
        return xla, "xla cost_analysis"
    if analytic is not None:
        return analytic, "analytic (jaxpr convs/matmuls)" + ("; the program loops" if loops else "")
    return None, "unavailable"


def _cost_flops(compiled) -> float | None:
    """XLA's own count (``compiled.cost_analysis()['flops']``) or None where the backend gives none."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # backends without a cost model raise various errors
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = cost.get("flops") if cost else None
    return float(flops) if flops and flops > 0 else None


def jaxpr_flops(fn: Callable, *args) -> float:
    """Analytic FLOPs of ``fn(*args)``: 2 per multiply-add of every ``dot_general`` and ``conv_general_dilated`` in
    its jaxpr (nested jaxprs included, scan bodies times their length); zeros inserted by ``lhs_dilation``
    (transposed convs) are not counted. Element-wise work is ignored (small next to the convs)."""
    return _jaxpr_count(fn, *args)[0]


def _jaxpr_count(fn: Callable, *args) -> tuple[float, bool]:
    """(:func:`jaxpr_flops`, whether the program has a scan or while loop)."""
    loops = False

    def count(jaxpr) -> float:
        nonlocal loops
        total = 0.0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "dot_general":
                (contract, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
            elif name == "conv_general_dilated":
                rhs = eqn.invars[1].aval.shape
                spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
                taps = math.prod(rhs[d] for d in spec[2:]) * rhs[spec[1]]
                holes = math.prod(eqn.params.get("lhs_dilation") or (1,))
                total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * taps / holes
            elif name in ("scan", "while"):
                loops = True
            times = eqn.params.get("length", 1) if name == "scan" else 1
            for sub in jaxprs_in_params(eqn.params):
                total += times * count(sub)
        return total

    total = count(jax.make_jaxpr(fn)(*args).jaxpr)
    return total, loops


def xla_bytes(compiled) -> int | None:
    """Arguments + outputs + temporaries of one executable (XLA's static buffer assignment)."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:
        return None


@dataclass
class TimedPath:
    """One way of doing the work. ``run(r)`` does it once on the inputs of repeat ``r`` and returns host-ready
    outputs; ``flops`` is per call."""

    name: str
    run: Callable[[int], Any]
    compile_s: float = 0.0
    flops: float | None = None
    flops_source: str = "unavailable"
    xla_bytes: int | None = None
    # filled by measure
    first_s: float = 0.0
    times: list[float] | None = None
    stages: dict[str, list[float]] | None = None
    memory: dict[str, Any] | None = None
    first_out: Any = None


def measure(paths: Sequence[TimedPath], repeats: int, memory: Memory) -> None:
    """Warm-up call (repeat 0) per path, then ``repeats`` rounds in which every path runs once, in turn.
    The first timed call of each path also records its peak memory."""
    for p in paths:
        t = time.perf_counter()
        p.first_out = p.run(0)
        p.first_s = time.perf_counter() - t
        p.times = []
    for r in range(1, repeats + 1):
        for p in paths:
            if r == 1:
                base = memory.reset()
            t = time.perf_counter()
            p.run(r)
            p.times.append(time.perf_counter() - t)
            if r == 1:
                p.memory = {"peak_bytes": memory.peak(), "baseline_bytes": base, "source": memory.source,
                            "xla_bytes": p.xla_bytes}


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def aot_compile(fn, *args) -> tuple[Any, float]:
    """``fn.lower(*args).compile()`` and the seconds it took."""
    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t


def check_fits(paths: Sequence[TimedPath], max_bytes: float | None) -> str | None:
    if max_bytes is None:
        return None
    big = [(p.name, p.xla_bytes) for p in paths if p.xla_bytes and p.xla_bytes > max_bytes]
    if big:
        name, need = big[0]
        return f"{name} path needs ~{need / 2**30:.1f} GiB (XLA buffers) > --max-memory-gb {max_bytes / 2**30:g}"
    return None


def result_row(bench: str, path: TimedPath, base: dict[str, Any], items: int, unit: str, dtype: str,
            device: dict[str, Any]) -> dict[str, Any]:
    med = median(path.times)
    rate = items / med
    peak = peak_flops(device["device_kind"], dtype)
    flops_per_item = None if path.flops is None else path.flops / items
    achieved = None if flops_per_item is None else flops_per_item * rate
    row = {
        "bench": bench, "path": path.name, **base, "dtype": dtype, **device,
        "repeats": len(path.times), "time_s_median": med, "times_s": [round(t, 4) for t in path.times],
        unit: rate, "compile_s": round(path.compile_s, 3),
        "first_call_s": round(path.first_s, 3),
        "flops_per_item": flops_per_item, "flops_source": path.flops_source,
        "achieved_flops_per_s": achieved, "peak_flops_per_s": peak,
        "peak_fraction": (achieved / peak) if (achieved is not None and peak) else "unknown",
        "memory": path.memory,
    }
    if path.stages:
        row["stages_s_median"] = {k: median(v) for k, v in path.stages.items()}
    return row


def host_context() -> dict[str, Any]:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"loadavg_at_start": load, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}

