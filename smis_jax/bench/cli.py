"""Benchmarks: pseudo-labelling, training steps and inversion, with the original's path beside ours (issue #4).

    python -m smis_jax.bench labeling --config ffhq --mode dense --batch 1,4 --dtype float32
    python -m smis_jax.bench labeling --config ffhq --mode sparse --batch 1,4 --vectors-per-class 9
    python -m smis_jax.bench train-step --config ffhq --mode dense            # batch 2, IR-SE-50
    python -m smis_jax.bench inversion --config church --batch 5 --steps 4    # K = 5 images
    python -m smis_jax.bench labeling --quick                                  # tiny shapes: a smoke test
    python -m smis_jax.bench app --checkpoint EXPORT                           # the editor's update latency

Every comparison runs all its paths in one process on identical inputs: each path is compiled and warmed up
once, then the paths take turns repeat by repeat (a shared, noisy machine slows both alike) and the median
is reported; compile time is reported apart. Weights are random at the real shapes (speed does not depend on
the values). Each result is one JSON line (stdout, or appended to ``--json-out``) and a row of a table.

Two versions of the original are measured. ``original-torch`` (labelling only) is the original itself: its
PyTorch generator (rosinality's, as vendored by ``draggan``) and psp.py's labelling code, see
:mod:`smis_jax.bench.reference`; it needs torch and draggan, runs in float32 on the CPU, and is what a user switching
from the original gains. ``original-jax`` keeps the original's algorithmic structure but runs on our
(tested-equal) ops, so a ratio against it measures the structural change alone, and ``original-torch`` against
``original-jax`` measures the ops alone:

* labelling -- the original renders every sample at full resolution (coach.py:137-140; the image is returned,
  as the original returns it, so XLA cannot drop the layers above 64x64) and then labels it. Dense labels were
  already vectorised in the original, so only the render differs. Sparse labels follow psp.py:256-277: per
  sample, per class c >= 1, one jitted device call (similarity matmul, top-k, descending sort of the 3*N_c
  pairs), a device->host copy and ``np.unique`` on the host (the original's ``.cpu()`` round trip), then the
  running-best update (done in numpy: on a CPU "device" that is host memory anyway, which favours the original).
  Ours renders only up to the 64x64 block and labels in one vectorised jitted function.
* train-step -- the original: full-resolution render for labelling + the original labelling structure + the
  encoder update (same loss and Ranger as ours) + the full decoder forward on the encoder's output, which
  coach.py:146 computes every step for logging although the loss does not use it (returned, so it is computed).
  Ours: :func:`smis_jax.training.make_train_step` as training runs it. Both thread the same encoder state.
* inversion -- the original inverts the K images one after another (K sequential runs of
  :func:`smis_jax.inversion.invert` on one image); ours inverts all K at once. Steps per second are steps of
  all K images.

Prototypes: five "shots" are generated (rendered to 64x64 with the same random generator) and labelled with
random masks, and :func:`smis_jax.labeling.prototypes` builds the prototypes from them, so cosines behave as in
training (random unit vectors would give cosines near 0, degenerate argmaxes and no sparse pixel above the
0.5 threshold). Dense: a random Voronoi partition of each shot into L classes. Sparse: ``vectors_per_class``
random annotated 64x64 pixels per class c >= 1 over the five shots (default 9: the five real CelebALandmark-HQ
masks of the samples give 616 vectors for 70 classes, 8.8 per class).

With the PyTorch path and no ``--weights``, the random weights are the PyTorch generator's own initialisation
converted to ours by the shipped converter, and the same z and noise go to every path, so the rows also report
how many label pixels agree with each original (``agree_with_original_torch``, ``agree_with_original_jax``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from smis_jax import labeling
from smis_jax.bench import reference
from smis_jax.config import DOMAINS
from smis_jax.conversion.common import ConversionError
from smis_jax.psp import EncoderConfig
from smis_jax.stylegan2 import FEATURE_RES, Generator, GeneratorConfig, init_params, make_noise
from smis_jax.torchfile import TorchFileError

__all__ = [
    "BenchError", "Preset", "PRESETS", "PEAK_FLOPS", "device_info", "peak_flops", "jaxpr_flops",
    "make_prototypes", "random_train_state", "original_sparse_labels", "bench_labeling", "bench_train_step", "bench_inversion", "format_table", "main",
]

LABEL_SIZE = 256  # pseudo-labels and the encoder input are 256x256 for every domain (SPEC.md 5.2)
N_SHOTS = 5


class BenchError(ValueError):
    """A benchmark option is invalid; the message names it and the allowed values."""


# ---------------------------------------------------------------------------------------------------------------
# Presets: generator shapes of the original's checkpoints, class counts of its domains.

def _tiny_generator() -> GeneratorConfig:
    """The golden test generator's shapes (size 128, style_dim 64): compiles in seconds."""
    return GeneratorConfig(128, style_dim=64, n_mlp=4, channels={4: 64, 8: 64, 16: 48, 32: 48, 64: 32, 128: 16})


@dataclass(frozen=True)
class Preset:
    name: str
    generator: GeneratorConfig
    dense_domain: str  # DOMAINS entry whose class count dense runs use
    sparse_domain: str  # ... and sparse runs
    encoder: str  # "ir_se50" (pSp's) or "tiny" (the golden test encoder)

    def n_classes(self, mode: str) -> int:
        return DOMAINS[self.dense_domain if mode == "dense" else self.sparse_domain].n_classes

    def encoder_config(self, mode: str) -> EncoderConfig:
        n_latent = self.generator.n_latent
        if self.encoder == "tiny":
            return EncoderConfig.tiny(self.n_classes(mode), n_latent)
        return EncoderConfig.ir_se50(self.n_classes(mode), n_latent)


PRESETS: dict[str, Preset] = {
    # FFHQ config-f: CelebAMask-HQ (19 classes, dense) and CelebALandmark-HQ (71, sparse).
    "ffhq": Preset("ffhq", GeneratorConfig.rosinality(1024, 2), "faces", "faces-landmarks", "ir_se50"),
    # LSUN church 256 config-f (151 classes); sparse runs use the cat scribbles' 9 (the same 256 config-f shapes).
    "church": Preset("church", GeneratorConfig.rosinality(256, 2), "church", "cat", "ir_se50"),
    # LSUN car 512 config-f (5 classes); sparse runs use anime's 2 (the same 512 config-f shapes).
    "car": Preset("car", GeneratorConfig.rosinality(512, 2), "car", "anime", "ir_se50"),
    # ukiyo-e 256, channel multiplier 1 (8 classes, sparse in the original; dense runs use the same count).
    "ukiyoe": Preset("ukiyoe", GeneratorConfig.rosinality(256, 1), "ukiyoe", "ukiyoe", "ir_se50"),
    "tiny": Preset("tiny", _tiny_generator(), "tiny", "tiny-sparse", "tiny"),
}


# ---------------------------------------------------------------------------------------------------------------
# Devices, peak FLOP/s, memory.

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


class _Memory:
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

def _flops(compiled, fn: Callable, *args) -> tuple[float | None, str]:
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
    from jax.extend.core import jaxprs_in_params

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


def _xla_bytes(compiled) -> int | None:
    """Arguments + outputs + temporaries of one executable (XLA's static buffer assignment)."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------------------------
# Timing: warm up every path, then take turns.

@dataclass
class _Path:
    """One way of doing the work. ``run(r)`` does it once on the inputs of repeat ``r`` and returns host-ready
    outputs; ``flops`` is per call."""

    name: str
    run: Callable[[int], Any]
    compile_s: float = 0.0
    flops: float | None = None
    flops_source: str = "unavailable"
    xla_bytes: int | None = None
    # filled by _measure
    first_s: float = 0.0
    times: list[float] | None = None
    stages: dict[str, list[float]] | None = None
    memory: dict[str, Any] | None = None
    first_out: Any = None


def _measure(paths: Sequence[_Path], repeats: int, memory: _Memory) -> None:
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


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _aot(fn, *args) -> tuple[Any, float]:
    """``fn.lower(*args).compile()`` and the seconds it took."""
    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t


def _check_fits(paths: Sequence[_Path], max_bytes: float | None) -> str | None:
    if max_bytes is None:
        return None
    big = [(p.name, p.xla_bytes) for p in paths if p.xla_bytes and p.xla_bytes > max_bytes]
    if big:
        name, need = big[0]
        return f"{name} path needs ~{need / 2**30:.1f} GiB (XLA buffers) > --max-memory-gb {max_bytes / 2**30:g}"
    return None


def _result(bench: str, path: _Path, base: dict[str, Any], items: int, unit: str, dtype: str,
            device: dict[str, Any]) -> dict[str, Any]:
    med = _median(path.times)
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
        row["stages_s_median"] = {k: _median(v) for k, v in path.stages.items()}
    return row


def _host_context() -> dict[str, Any]:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"loadavg_at_start": load, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


# ---------------------------------------------------------------------------------------------------------------
# Inputs: generator weights, prototypes from generated shots.

# Inputs are built by a few whole-tree jits or in numpy: every distinct eager op is a compile of its own, and
# hundreds of them (one per parameter leaf) cost more than the benchmarked programs at the tiny shapes.

@partial(jax.jit, static_argnums=(1,))
def _cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


_init_params = jax.jit(init_params, static_argnums=(0,))


def _normal(seed: int, shape) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def _z_and_noise(gcfg: GeneratorConfig, key, batch: int, until_res: int | None, dtype):
    """The latent z (B, D) and noise list (rosinality order, up to ``until_res``) that ``key`` draws."""
    key_z, key_noise = jax.random.split(key)
    z = jax.random.normal(key_z, (batch, gcfg.style_dim)).astype(dtype)
    return z, [n.astype(dtype) for n in make_noise(gcfg, key_noise, batch, until_res)]


def _sample(gcfg: GeneratorConfig, params, key, batch: int, until_res: int | None, dtype):
    """z ~ N(0, I) -> mapping -> W (broadcast to W+) -> generator with fresh noise, all in ``dtype``.
    Returns (image (B, size, size, 3) or None, features (B, 64, 64, C), w_plus (B, S, D))."""
    z, noise = _z_and_noise(gcfg, key, batch, until_res, dtype)
    g = Generator(gcfg)
    w = g.apply(params, z, method=Generator.mapping)
    w_plus = jnp.broadcast_to(w[:, None, :], (batch, gcfg.n_latent, gcfg.style_dim))
    image, features = g.apply(params, w_plus, noise, until_res)
    return image, features, w_plus


def make_prototypes(gcfg: GeneratorConfig, params, mode: str, n_classes: int, key: jax.Array,
                    vectors_per_class: int = 9):
    """Prototypes from five generated shots with random masks (see the module docstring), float32.

    dense -> DensePrototypes (L, C); sparse -> SparsePrototypes with ``vectors_per_class`` vectors for each class
    1..L-1 (fewer if the shots have too few pixels)."""
    key_shots, key_mask = jax.random.split(key)
    _, feats, _ = jax.jit(partial(_sample, gcfg, batch=N_SHOTS, until_res=FEATURE_RES, dtype=jnp.float32))(
        params, key_shots)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key_mask))[-1])
    h = w = FEATURE_RES
    if mode == "dense":
        yy, xx = np.mgrid[:h, :w]
        ids = np.empty((N_SHOTS, h, w), np.int64)
        for k in range(N_SHOTS):  # a Voronoi partition: every class owns the pixels nearest its seed
            seeds = rng.integers(0, h, size=(n_classes, 2))
            d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
            ids[k] = np.argmin(d, axis=-1)
    elif mode == "sparse":
        ids = np.zeros(N_SHOTS * h * w, np.int64)
        per_class = min(vectors_per_class, (ids.size - 1) // max(n_classes - 1, 1))
        spots = rng.permutation(ids.size)[: per_class * (n_classes - 1)]
        ids[spots] = np.repeat(np.arange(1, n_classes), per_class)
        ids = ids.reshape(N_SHOTS, h, w)
    else:
        raise BenchError(f"mode must be 'dense' or 'sparse', got {mode!r}")
    onehot = np.eye(n_classes, dtype=np.float32)[ids]  # (K, 64, 64, L)
    return labeling.prototypes(np.asarray(feats), onehot, mode)


# ---------------------------------------------------------------------------------------------------------------
# The original's sparse labelling structure (psp.py:256-277): per sample, per class, a host round trip.

@partial(jax.jit, static_argnames=("topk",))
def _class_pairs(v_nC, fn_PC, topk: int):
    """One class, one sample, on the device: similarities (n, P), each vector's top-k pixels, and all 3n
    (value, pixel) pairs sorted by value, descending (torch.mm + torch.topk + torch.sort)."""
    sim = jnp.einsum("nc,pc->np", v_nC, fn_PC, precision=jax.lax.Precision.HIGHEST)
    val, pix = jax.lax.top_k(sim, topk)
    val, pix = val.ravel(), pix.ravel()
    order = jnp.argsort(-val, stable=True)
    return val[order], pix[order]


@jax.jit
def _unit_pixels(features_NHWC):
    """(B, H, W, C) -> (B, H*W, C) float32 unit vectors (the original's ``F / (||F|| + 1e-8)``)."""
    b, h, w, c = features_NHWC.shape
    f = features_NHWC.astype(jnp.float32).reshape(b, h * w, c)
    return f / (jnp.linalg.norm(f, axis=-1, keepdims=True) + labeling.EPS)


def _vectors_by_class(protos: labeling.SparsePrototypes) -> list[jax.Array]:
    """The original's ``vecs``: one (N_c, C) device array per class (class 0 included, never used)."""
    classes = np.asarray(protos.classes)
    vectors = np.asarray(protos.vectors)
    return [jnp.asarray(vectors[classes == c]) for c in range(protos.n_classes)]


def original_sparse_labels(features_NHWC, vecs: Sequence[jax.Array], topk: int = 3, cos_th: float = 0.5,
                           out_size: int = LABEL_SIZE) -> np.ndarray:
    """psp.py's sparse pseudo-labelling loop: (B, H, W, C) features -> (B, out_size, out_size) int32 (host).

    For each sample and each class c >= 1: the device call :func:`_class_pairs`, then the pairs come to the host
    and ``np.unique`` keeps the first (best) pair per pixel; values <= cos_th become 0 and class c takes the
    pixels where it beats the running best strictly."""
    fn_BPC = _unit_pixels(features_NHWC)
    b, p, _ = fn_BPC.shape
    h = features_NHWC.shape[1]
    out = np.zeros((b, p), np.int32)
    for i in range(b):
        fn_PC = fn_BPC[i]
        label = np.zeros(p, np.int32)
        best = np.zeros(p, np.float32)
        for c in range(1, len(vecs)):
            d = np.zeros(p, np.float32)
            if vecs[c].shape[0]:
                val, pix = _class_pairs(vecs[c], fn_PC, topk)
                val, pix = np.asarray(val), np.asarray(pix)  # the original's .cpu() round trip
                uniq, first = np.unique(pix, return_index=True)
                d[uniq] = np.where(val[first] > cos_th, val[first], 0.0)
            update = best < d
            label[update] = c
            best = np.maximum(best, d)
        out[i] = label
    s = out_size // h
    return out.reshape(b, h, h).repeat(s, axis=1).repeat(s, axis=2)


def _class_pair_flops(vecs: Sequence[jax.Array], p: int) -> float:
    """Similarity matmul FLOPs of one sample's per-class loop (top-k and sort ignored)."""
    return sum(2.0 * v.shape[0] * v.shape[1] * p for v in vecs[1:])


# ---------------------------------------------------------------------------------------------------------------
# Labelling.

def _ours_labels(gcfg, batch, dtype, topk, out_size, params, protos, cos_th, key):
    _, features, _ = _sample(gcfg, params, key, batch, FEATURE_RES, dtype)
    return labeling.pseudo_label(features, protos, topk=topk, cos_th=cos_th, out_size=out_size)


def _original_dense_labels(gcfg, batch, dtype, out_size, params, protos, key):
    image, features, _ = _sample(gcfg, params, key, batch, None, dtype)
    return image, labeling.pseudo_label(features, protos, out_size=out_size)


def _original_render(gcfg, batch, dtype, params, key):
    image, features, _ = _sample(gcfg, params, key, batch, None, dtype)
    return image, features


def generator_dtype_report(gcfg: GeneratorConfig, dtype) -> dict[str, Any]:
    """Does the generator run in ``dtype`` end to end? Lists every conv/matmul of its jaxpr (mapping included,
    params and inputs cast to ``dtype``) whose output has another dtype."""
    from jax.extend.core import jaxprs_in_params

    params = jax.eval_shape(partial(init_params, gcfg), jax.random.key(0))
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), params)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)

    def fn(params, key):
        return _sample(gcfg, params, key, 1, None, dtype)[:2]

    others, total = [], 0

    def walk(jaxpr):
        nonlocal total
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                total += 1
                if eqn.outvars[0].aval.dtype != dtype:
                    others.append(f"{eqn.primitive.name}->{eqn.outvars[0].aval.dtype}")
            for sub in jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(params, key).jaxpr)
    return {"end_to_end": not others, "convs_and_matmuls": total, "in_other_dtypes": sorted(set(others))}


def _torch_reference(gcfg: GeneratorConfig, weights: str | None, seed: int):
    """The PyTorch original's generator (see :mod:`smis_jax.bench.reference`) or None: with ``weights``, only a
    rosinality ``.pt`` (its ``g_ema``) can be handed to it; a converted directory or an NVIDIA ``.pkl`` runs without it."""
    state_dict = None
    if weights is not None:
        from smis_jax import nvidiafile

        if Path(weights).is_dir() or nvidiafile.is_pickle(weights):  # by content, not by name
            return None
        from smis_jax import torchfile

        state_dict = torchfile.load(weights)["g_ema"]
    return reference.load_reference(gcfg, _channel_multiplier(gcfg), seed, state_dict)


def _torch_original_path(ref, gcfg: GeneratorConfig, batch: int, mode: str, protos, keys, topk: int,
                         cos_th: float) -> _Path:
    """psp.py's labelling on rosinality's PyTorch generator, fed the z and noise our paths draw from ``keys``."""
    inputs = []
    for key in keys:
        z, noise = _z_and_noise(gcfg, key, batch, None, jnp.float32)
        inputs.append(reference.inputs(np.asarray(z), [np.asarray(n) for n in noise]))
    if mode == "dense":
        tprotos = reference.dense_prototypes(protos.vectors)
    else:
        tprotos = reference.sparse_vectors(_vectors_by_class(protos))
    return _Path("original-torch", lambda r: reference.labels(ref, *inputs[r], mode, tprotos, topk, cos_th,
                                                                 LABEL_SIZE),
                 flops_source="as original-jax (the same work)")


def bench_labeling(preset: Preset, mode: str, batches: Sequence[int], dtype: str = "float32", repeats: int = 3,
                   vectors_per_class: int = 9, topk: int = 3, cos_th: float = 0.5, max_memory_gb: float | None = None,
                   torch_row: bool = True, seed: int = 0, weights: str | None = None) -> list[dict[str, Any]]:
    """Pseudo-labels per second, the original's paths vs ours, for each batch size. Returns one dict per
    (batch, path): ``original-torch`` (when torch and draggan are importable, float32 only), ``original-jax``,
    ``ours``.

    ``weights``: a rosinality checkpoint or converted directory whose generator replaces the random one (its
    shapes replace the preset's); the speed is the same, but bfloat16 agreement is only meaningful with trained
    weights (random weights give near-identical prototypes, see ``f32_top2_margin_median``). Without ``weights``
    and with the PyTorch path, the random weights are the PyTorch generator's own initialisation, converted to
    ours, so all three paths hold the same weights and their labels can be compared."""
    gcfg = preset.generator
    n_classes = preset.n_classes(mode)
    jdtype = jnp.dtype(dtype)
    device = device_info()
    memory = _Memory()
    key_params, key_protos, key_runs = jax.random.split(jax.random.key(seed), 3)
    weights_desc = weights or "random"
    if weights is not None:
        from smis_jax import stylegan2

        loaded = stylegan2.load(weights)
        gcfg, params32 = loaded.config, loaded.params
    ref = _torch_reference(gcfg, weights, seed) if (torch_row and dtype == "float32") else None
    if weights is None:
        if ref is not None:
            params32, weights_desc = jax.tree.map(jnp.asarray, ref.params), "random (PyTorch initialisation)"
        else:
            params32 = _init_params(gcfg, key_params)
    params = _cast(params32, jdtype)
    protos = make_prototypes(gcfg, params32, mode, n_classes, key_protos, vectors_per_class)
    vecs = _vectors_by_class(protos) if mode == "sparse" else None
    n_vectors = int(protos.vectors.shape[0])
    cos = jnp.float32(cos_th)
    dtype_check = generator_dtype_report(gcfg, jdtype) if dtype != "float32" else None
    rows = []
    for batch in batches:
        keys = [jax.random.fold_in(key_runs, r) for r in range(repeats + 1)]
        ours_jit = jax.jit(partial(_ours_labels, gcfg, batch, jdtype, topk, LABEL_SIZE))
        ours_c, ours_compile = _aot(ours_jit, params, protos, cos, keys[0])
        ours = _Path("ours", lambda r: np.asarray(ours_c(params, protos, cos, keys[r])), ours_compile,
                     *_flops(ours_c, ours_jit, params, protos, cos, keys[0]), _xla_bytes(ours_c))
        if mode == "dense":
            orig_jit = jax.jit(partial(_original_dense_labels, gcfg, batch, jdtype, LABEL_SIZE))
            orig_c, orig_compile = _aot(orig_jit, params, protos, keys[0])

            def orig_run(r):
                image, labels = orig_c(params, protos, keys[r])
                jax.block_until_ready(image)
                return np.asarray(labels)

            original = _Path("original-jax", orig_run, orig_compile,
                             *_flops(orig_c, orig_jit, params, protos, keys[0]), _xla_bytes(orig_c))
        else:
            render_jit = jax.jit(partial(_original_render, gcfg, batch, jdtype))
            render_c, orig_compile = _aot(render_jit, params, keys[0])
            render_flops, render_source = _flops(render_c, render_jit, params, keys[0])
            stages = {"render": [], "label": []}

            def orig_run(r):
                t = time.perf_counter()
                image, features = render_c(params, keys[r])
                jax.block_until_ready((image, features))
                t_render = time.perf_counter()
                labels = original_sparse_labels(features, vecs, topk, cos_th, LABEL_SIZE)
                if r > 0:
                    stages["render"].append(t_render - t)
                    stages["label"].append(time.perf_counter() - t_render)
                return labels

            flops = None if render_flops is None else render_flops + batch * _class_pair_flops(
                vecs, FEATURE_RES**2)
            original = _Path("original-jax", orig_run, orig_compile, flops,
                             f"{render_source} (render) + analytic (per-class matmuls)", _xla_bytes(render_c))
            original.stages = stages
        paths = [original, ours]
        torch_path = None
        if ref is not None:
            torch_path = _torch_original_path(ref, gcfg, batch, mode, protos, keys, topk, cos_th)
            torch_path.flops = original.flops
            paths.insert(0, torch_path)
        base = {"config": preset.name, "mode": mode, "batch": batch, "resolution": gcfg.size,
                "feature_res": FEATURE_RES, "label_res": LABEL_SIZE, "n_classes": n_classes,
                "n_prototype_vectors": n_vectors, "topk": topk if mode == "sparse" else None,
                "weights": weights_desc, **_host_context()}
        skip = _check_fits(paths, None if max_memory_gb is None else max_memory_gb * 2**30)
        if skip:
            rows.append({"bench": "labeling", "path": "skipped", **base, "dtype": dtype, **device, "skipped": skip})
            continue
        _measure(paths, repeats, memory)
        # The first compile of the per-class device calls happens in the warm-up: report it as compile time.
        if mode == "sparse":
            original.compile_s += max(0.0, original.first_s - _median(original.times))
        by_name = {}
        for p in paths:
            row = _result("labeling", p, base, batch, "labels_per_s", dtype, device)
            if p is torch_path:
                chunked = f", rendered in chunks of {reference.MAX_CHUNK}" if batch > reference.MAX_CHUNK else ""
                row.update(compile_s=0.0, note="PyTorch %s, rosinality's generator (draggan's copy) + psp.py's "
                           "labelling, torch threads=%d%s" % (ref.torch_version, ref.threads, chunked))
            by_name[p.name] = row
            rows.append(row)
        ours_row, orig_row = by_name["ours"], by_name["original-jax"]
        ours_labels = np.asarray(ours.first_out)
        ours_row["speedup_vs_original_jax"] = orig_row["time_s_median"] / ours_row["time_s_median"]
        ours_row["agree_with_original_jax"] = float(np.mean(ours_labels == np.asarray(original.first_out)))
        if torch_path is not None:
            torch_row_ = by_name["original-torch"]
            torch_labels = np.asarray(torch_path.first_out)
            for row, out in ((ours_row, ours_labels), (orig_row, np.asarray(original.first_out))):
                row["speedup_vs_original_torch"] = torch_row_["time_s_median"] / row["time_s_median"]
                row["agree_with_original_torch"] = float(np.mean(out == torch_labels))
        ours_row["labelled_fraction"] = float(np.mean(ours_labels > 0)) if mode == "sparse" else None
        if dtype != "float32":
            ref_c = jax.jit(partial(_ours_labels, gcfg, batch, jnp.float32, topk, LABEL_SIZE))
            ref32 = np.asarray(ref_c(params32, protos, cos, keys[0]))
            ours_row["agree_with_float32"] = float(np.mean(ours_labels == ref32))
            if mode == "sparse":  # agreement on the labelled pixels alone (the unlabelled majority agrees trivially)
                either = (ours_labels > 0) | (ref32 > 0)
                ours_row["agree_with_float32_labelled"] = float(np.mean(ours_labels[either] == ref32[either])) \
                    if either.any() else None
            ours_row["generator_dtype"] = dtype_check
            if mode == "dense":
                ours_row.update(_dense_margins(gcfg, params32, protos, batch, keys[0]))
    return rows


def _dense_margins(gcfg: GeneratorConfig, params32, protos: labeling.DensePrototypes, batch: int, key):
    """How close the float32 dense decisions are: the median gap between the best and second-best cosine per
    pixel, and the median cosine between prototypes (bfloat16 flips labels where the gap is small)."""
    @jax.jit
    def gaps(params, protos, key):
        _, features, _ = _sample(gcfg, params, key, batch, FEATURE_RES, jnp.float32)
        top2 = jax.lax.top_k(labeling.cosine_scores(features, protos), 2)[0]
        return top2[..., 0] - top2[..., 1]

    v = np.asarray(protos.vectors)[np.asarray(protos.present)]
    pair = (v @ v.T)[~np.eye(len(v), dtype=bool)]
    return {"f32_top2_margin_median": float(np.median(np.asarray(gaps(params32, protos, key)))),
            "prototype_pairwise_cos_median": float(np.median(pair)) if pair.size else None}


def _channel_multiplier(gcfg: GeneratorConfig) -> int:
    return max(1, gcfg.channel(FEATURE_RES) // 256) if FEATURE_RES in gcfg.resolutions else 2


# ---------------------------------------------------------------------------------------------------------------
# Training step.

def _original_render_step(cfg, gen_params, key):
    """coach.py:137-140: sample and render at full resolution (the image is kept for logging)."""
    from smis_jax.training import sample_latents

    key_w, key_noise = jax.random.split(key)
    w_plus = sample_latents(cfg, gen_params, key_w)
    noise = make_noise(cfg.generator, key_noise, cfg.batch_size)
    image, features = Generator(cfg.generator).apply(gen_params, w_plus, noise)
    return w_plus, image, features


def _original_update(cfg, state, gen_params, labels, w_plus, latent_avg, key):
    """coach.py:142-149: one-hot -> encoder (train mode) -> latent loss -> Ranger, plus the full decoder forward on
    the encoder's output with fresh noise (coach.py:146; logged only, so it is returned, not used)."""
    import optax

    from smis_jax.training import TrainState, latent_loss, optimizer

    onehot = labeling.labels_to_onehot(labels, cfg.encoder.input_nc)
    grad_fn = jax.value_and_grad(partial(latent_loss, cfg), has_aux=True)
    (loss, (batch_stats, _, latent)), grads = grad_fn(state.params, state.batch_stats, onehot, w_plus, latent_avg)
    updates, opt_state = optimizer(cfg).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    y_hat, _ = Generator(cfg.generator).apply(gen_params, latent, make_noise(cfg.generator, key, cfg.batch_size))
    return TrainState(state.step + 1, params, batch_stats, opt_state, state.key), loss, y_hat


def _original_dense_step(cfg, state, gen_params, protos, latent_avg):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    key_sample, key_decode = jax.random.split(key)
    w_plus, image, features = _original_render_step(cfg, gen_params, key_sample)
    labels = labeling.pseudo_label(features, protos, out_size=LABEL_SIZE, compat=cfg.compat)
    state, loss, y_hat = _original_update(cfg, state, gen_params, labels, w_plus, latent_avg, key_decode)
    return state, loss, image, y_hat


def random_train_state(cfg, seed: int = 0):
    """A :class:`smis_jax.training.TrainState` with random encoder weights at the real shapes (PyTorch's default
    ranges: kernels U(+-1/sqrt(fan_in)), EqualLinear weights N(0, 1), BatchNorm scale 1, PReLU 0.25) and a fresh
    Ranger state. Drawn in numpy: ``init_train_state`` jits the Flax init, whose one threefry per parameter takes
    about half a minute to compile on a 2-core CPU even for the tiny encoder."""
    from smis_jax.psp import abstract_variables
    from smis_jax.training import TrainState, optimizer

    rng = np.random.default_rng(seed)
    shapes = abstract_variables(cfg.encoder)

    def param(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "kernel":
            bound = 1.0 / math.sqrt(math.prod(leaf.shape[:-1]))
            return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
        if name == "weight":
            return rng.standard_normal(leaf.shape, dtype=np.float32)
        return np.full(leaf.shape, {"scale": 1.0, "alpha": 0.25}.get(name, 0.0), np.float32)

    params = jax.tree_util.tree_map_with_path(param, shapes["params"])
    batch_stats = jax.tree_util.tree_map_with_path(
        lambda path, s: np.full(s.shape, 1.0 if getattr(path[-1], "key", "") == "var" else 0.0, np.float32),
        shapes["batch_stats"])
    params, batch_stats = jax.device_put((params, batch_stats))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=jax.jit(optimizer(cfg).init)(params),
                      key=jax.random.key_data(jax.random.key(seed)))


def bench_train_step(preset: Preset, mode: str, batches: Sequence[int] = (2,), repeats: int = 3,
                     vectors_per_class: int = 9, max_memory_gb: float | None = None,
                     seed: int = 0) -> list[dict[str, Any]]:
    """Encoder updates (labelling included) per second, original path vs ours; images/s = batch x steps/s."""
    from smis_jax.training import StepConfig, data_mesh, make_train_step

    gcfg = preset.generator
    n_classes = preset.n_classes(mode)
    device = device_info()
    memory = _Memory()
    key_params, key_protos = jax.random.split(jax.random.key(seed))
    gen_params = _init_params(gcfg, key_params)
    protos = make_prototypes(gcfg, gen_params, mode, n_classes, key_protos, vectors_per_class)
    vecs = _vectors_by_class(protos) if mode == "sparse" else None
    latent_avg = _normal(seed + 1, (gcfg.n_latent, gcfg.style_dim))
    mesh = data_mesh()
    replicated = NamedSharding(mesh, P())
    rows = []
    for batch in batches:
        cfg = StepConfig(generator=gcfg, encoder=preset.encoder_config(mode), batch_size=batch)
        holder = {"state": random_train_state(cfg, seed)}  # one encoder state, threaded through both paths
        args = (gen_params, protos, latent_avg)
        ours_jit = make_train_step(cfg, mesh)
        ours_c, ours_compile = _aot(ours_jit, holder["state"], *args)

        def ours_run(r):
            holder["state"], metrics = ours_c(holder["state"], *args)
            return jax.device_get(metrics)

        ours = _Path("ours", ours_run, ours_compile, *_flops(ours_c, ours_jit, holder["state"], *args),
                     _xla_bytes(ours_c))
        if mode == "dense":
            step = jax.jit(partial(_original_dense_step, cfg), in_shardings=(replicated,) * 4,
                           out_shardings=replicated, donate_argnums=(0,))
            orig_c, orig_compile = _aot(step, holder["state"], *args)

            def orig_run(r):
                holder["state"], loss, image, y_hat = orig_c(holder["state"], *args)
                jax.block_until_ready((image, y_hat))
                return float(loss)

            original = _Path("original-jax", orig_run, orig_compile, *_flops(orig_c, step, holder["state"], *args),
                             _xla_bytes(orig_c))
        else:
            render = jax.jit(partial(_original_render_step, cfg), out_shardings=replicated)
            update = jax.jit(partial(_original_update, cfg), out_shardings=replicated, donate_argnums=(0,))
            key0 = jax.random.key(0)
            render_c, t_render = _aot(render, gen_params, key0)
            w0, _, f0 = render_c(gen_params, key0)
            labels0 = jnp.zeros((batch, LABEL_SIZE, LABEL_SIZE), jnp.int32)
            update_c, t_update = _aot(update, holder["state"], gen_params, labels0, w0, latent_avg, key0)
            stages = {"render": [], "label": [], "update": []}

            def orig_run(r):
                state = holder["state"]
                key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
                key_sample, key_decode = jax.random.split(key)
                t0 = time.perf_counter()
                w_plus, image, features = render_c(gen_params, key_sample)
                jax.block_until_ready(image)
                t1 = time.perf_counter()
                labels = original_sparse_labels(features, vecs, cfg.topk, cfg.cos_th, LABEL_SIZE)
                t2 = time.perf_counter()
                holder["state"], loss, y_hat = update_c(state, gen_params, jnp.asarray(labels), w_plus,
                                                        latent_avg, key_decode)
                jax.block_until_ready(y_hat)
                if r > 0:
                    stages["render"].append(t1 - t0)
                    stages["label"].append(t2 - t1)
                    stages["update"].append(time.perf_counter() - t2)
                return float(loss)

            (f_render, source), (f_update, _) = (_flops(render_c, render, gen_params, key0),
                                                 _flops(update_c, update, holder["state"], gen_params, labels0,
                                                        w0, latent_avg, key0))
            flops = None if None in (f_render, f_update) else (
                f_render + f_update + batch * _class_pair_flops(vecs, FEATURE_RES**2))
            original = _Path("original-jax", orig_run, t_render + t_update, flops,
                             f"{source} (render, update) + analytic (per-class matmuls)",
                             max(_xla_bytes(render_c) or 0, _xla_bytes(update_c) or 0) or None)
            original.stages = stages
        base = {"config": preset.name, "mode": mode, "batch": batch, "resolution": gcfg.size,
                "encoder": preset.encoder, "n_classes": n_classes, "n_prototype_vectors": int(protos.vectors.shape[0]),
                **_host_context()}
        skip = _check_fits([original, ours], None if max_memory_gb is None else max_memory_gb * 2**30)
        if skip:
            rows.append({"bench": "train-step", "path": "skipped", **base, "dtype": "float32", **device,
                         "skipped": skip})
            continue
        _measure([original, ours], repeats, memory)
        if mode == "sparse":
            original.compile_s += max(0.0, original.first_s - _median(original.times))
        orig_row = _result("train-step", original, base, batch, "images_per_s", "float32", device)
        ours_row = _result("train-step", ours, base, batch, "images_per_s", "float32", device)
        ours_row["speedup_vs_original_jax"] = orig_row["time_s_median"] / ours_row["time_s_median"]
        rows += [orig_row, ours_row]
        del holder, ours_c, original, ours
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Inversion.

def bench_inversion(preset: Preset, ks: Sequence[int] = (5,), steps: int = 5, repeats: int = 3, seed: int = 0,
                    xla_flops: bool = True, target_size: int = LABEL_SIZE) -> list[dict[str, Any]]:
    """Inversion steps per second for K images: ours (K at once) vs the original (K sequential one-image runs).

    Image k gets the same key in both paths, so both follow the same trajectories (reported as the largest
    relative difference of the final losses). ``xla_flops=False`` counts the FLOPs from the jaxpr instead of
    compiling the loss gradient once more; ``target_size`` (the original's 256) may be lowered for smoke runs."""
    from smis_jax import lpips as lpips_lib
    from smis_jax.inversion import image_loss, invert
    from smis_jax.stylegan2 import LoadedGenerator

    gcfg = preset.generator
    device = device_info()
    memory = _Memory()
    key_params, key_noise, key_runs = jax.random.split(jax.random.key(seed), 3)
    params = _init_params(gcfg, key_params)
    noise1 = make_noise(gcfg, key_noise, 1)  # the stored buffers (unused: inversion draws fresh noise every step)
    gen = LoadedGenerator(gcfg, params, noise1, _normal(seed + 1, (gcfg.style_dim,)))
    lpips_params = lpips_lib.load().params

    # Model FLOPs of one image-step: generator forward + pooling + MSE + LPIPS, and the gradient (Ranger ignored).
    def one_step_loss(w_plus, noise, target):
        image, _ = Generator(gcfg).apply(params, w_plus, noise)
        return jnp.sum(image_loss(lpips_params, image, target, 1.0, 0.8))

    w1 = jnp.zeros((1, gcfg.n_latent, gcfg.style_dim))
    t1 = jnp.zeros((1, target_size, target_size, 3))
    grad_jit = jax.jit(jax.value_and_grad(one_step_loss))
    if xla_flops:
        step_flops, flops_source = _flops(grad_jit.lower(w1, noise1, t1).compile(), grad_jit, w1, noise1, t1)
    else:
        step_flops, flops_source = jaxpr_flops(grad_jit, w1, noise1, t1), "analytic (jaxpr convs/matmuls)"
    flops_source += " (value_and_grad of the loss, 1 image; Ranger not counted)"

    rows = []
    for k in ks:
        targets = jnp.asarray(np.random.default_rng(seed + k).uniform(-1, 1, (k, target_size, target_size, 3)),
                              jnp.float32)
        keys = [jax.random.split(jax.random.fold_in(key_runs, r), k) for r in range(repeats + 1)]  # per image

        def ours_run(r):
            return invert(gen, lpips_params, targets, keys=keys[r], steps=steps, chunk=steps).final_loss

        def orig_run(r):
            return np.concatenate([invert(gen, lpips_params, targets[i:i + 1], keys=keys[r][i:i + 1], steps=steps,
                                          chunk=steps).final_loss for i in range(k)])

        flops = step_flops * k * steps
        source = flops_source
        original = _Path("original-jax", orig_run, flops=flops, flops_source=source)
        ours = _Path("ours", ours_run, flops=flops, flops_source=source)
        _measure([original, ours], repeats, memory)
        for p in (original, ours):  # invert() compiles on its first call: the warm-up's extra time
            p.compile_s = max(0.0, p.first_s - _median(p.times))
        base = {"config": preset.name, "k_images": k, "batch": k, "steps": steps, "resolution": gcfg.size,
                "target_res": target_size, **_host_context()}
        orig_row = _result("inversion", original, base, k * steps, "image_steps_per_s", "float32", device)
        ours_row = _result("inversion", ours, base, k * steps, "image_steps_per_s", "float32", device)
        for row in (orig_row, ours_row):
            row["steps_per_s"] = steps / row["time_s_median"]  # steps of all K images per second
        ours_row["speedup_vs_original_jax"] = orig_row["time_s_median"] / ours_row["time_s_median"]
        a, b = np.asarray(ours.first_out, np.float64), np.asarray(original.first_out, np.float64)
        ours_row["final_loss_max_rel_diff_vs_original_jax"] = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))
        rows += [orig_row, ours_row]
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Output.

_RATE_KEYS = ("labels_per_s", "images_per_s", "steps_per_s")


def _fmt_bytes(n) -> str:
    return "-" if not n else f"{n / 2**30:.2f}G"


def _fmt_ratio(x) -> str:
    return "" if x is None else f"{x:.2f}x"


def _fmt_percent(x) -> str:
    return "" if x is None else f"{100 * x:.2f}%"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of results (one line per row)."""
    head = ["bench", "config", "mode", "dtype", "batch", "path", "median_s", "rate", "x_vs_torch", "x_vs_orig_jax",
            "compile_s", "GFLOP/item", "GFLOP/s", "%peak", "peak_mem", "agree_torch", "agree_orig_jax", "agree_f32"]
    lines = [head]
    for r in rows:
        if r.get("path") == "skipped":
            lines.append([r["bench"], r["config"], str(r.get("mode", "-")), r["dtype"], str(r["batch"]), "skipped",
                          r["skipped"]])
            continue
        rate_key = next(k for k in _RATE_KEYS if k in r)
        unit = {"labels_per_s": "labels/s", "images_per_s": "img/s", "steps_per_s": "steps/s"}[rate_key]
        fpi, ach, frac = r.get("flops_per_item"), r.get("achieved_flops_per_s"), r.get("peak_fraction")
        mem = r.get("memory") or {}
        lines.append([
            r["bench"], r["config"], str(r.get("mode", "-")), r["dtype"], str(r["batch"]), r["path"],
            f"{r['time_s_median']:.3f}", f"{r[rate_key]:.3g} {unit}",
            _fmt_ratio(r.get("speedup_vs_original_torch")), _fmt_ratio(r.get("speedup_vs_original_jax")),
            f"{r['compile_s']:.1f}", "-" if fpi is None else f"{fpi / 1e9:.1f}",
            "-" if ach is None else f"{ach / 1e9:.1f}",
            f"{100 * frac:.1f}" if isinstance(frac, float) else str(frac), _fmt_bytes(mem.get("peak_bytes")),
            *(_fmt_percent(r.get(k)) for k in ("agree_with_original_torch", "agree_with_original_jax",
                                                "agree_with_float32")),
        ])
    widths = [max(len(row[i]) for row in lines if i < len(row)) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines)


# ---------------------------------------------------------------------------------------------------------------
# CLI.

_DEFAULT_BATCH = {"labeling": "1,4,16", "train-step": "2", "inversion": "5"}
_QUICK_BATCH = {"labeling": "1", "train-step": "2", "inversion": "2"}


def _parse_batches(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"--batch must be comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise BenchError(f"--batch must be comma-separated positive integers, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m smis_jax.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("bench", choices=["labeling", "train-step", "inversion", "app"])
    ap.add_argument("--config", choices=sorted(PRESETS), help="generator shapes and class counts (default ffhq; "
                    "tiny with --quick)")
    ap.add_argument("--mode", choices=["dense", "sparse"], default="dense")
    ap.add_argument("--batch", help="comma-separated batch sizes (inversion: K images). Defaults: labeling 1,4,16; "
                    "train-step 2; inversion 5")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="labeling only: generator params and inputs in this dtype")
    ap.add_argument("--repeats", type=int, help="timed runs per path after the warm-up (default 3; 2 with --quick)")
    ap.add_argument("--steps", type=int, help="inversion steps per timed run (default 5; 2 with --quick)")
    ap.add_argument("--vectors-per-class", type=int, default=9, help="sparse: annotated 64x64 vectors per class")
    ap.add_argument("--max-memory-gb", type=float, default=None,
                    help="skip a batch whose XLA buffers exceed this (default: 12 on CPU, no limit elsewhere)")
    ap.add_argument("--no-torch", action="store_true", help="labeling: leave out the original-torch path (the "
                    "original's PyTorch generator and labelling; needs torch and draggan)")
    ap.add_argument("--weights", help="labeling: a StyleGAN2 checkpoint (rosinality .pt, NVIDIA .pkl or converted "
                    "directory) to use instead of random weights (its shapes replace the config's; the original-torch "
                    "path only takes a .pt)")
    ap.add_argument("--quick", action="store_true", help="tiny config, first default batch, 2 repeats")
    ap.add_argument("--json-out", type=Path, help="append JSON lines here (the table goes to stdout)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", help="app: the synthesis export the editor serves (default: the editor's)")
    ap.add_argument("--variants", type=int, default=4, help="app: variants per update (default 4, as the editor)")
    return ap


def bench_app(checkpoint: str | None, variants: int = 4, repeats: int = 20, seed: int = 0) -> dict[str, Any]:
    """The editor's update (issue 14): a new mask -> encoder -> generator (image + N variants) -> PNGs, as
    ``python -m smis_jax.app`` serves it, timed by :meth:`smis_jax.app.editor.Editor.update` after its warm-up."""
    from smis_jax.app import _default_checkpoint
    from smis_jax.app.editor import Editor

    editor = Editor(checkpoint or _default_checkpoint(), variants=variants)
    rng = np.random.default_rng(seed)
    labels = np.zeros((editor.size, editor.size), np.uint8)
    times = []
    for i in range(repeats):  # each update paints one more rectangle, as a person adds strokes between updates
        x, y = rng.integers(0, editor.size - 32, 2)
        labels[y:y + 32, x:x + 32] = rng.integers(0, editor.domain.n_classes)
        times.append(editor.update(labels, seed=i, truncation=0.7).ms)
    return {"bench": "app", "checkpoint": str(editor.checkpoint), "domain": editor.domain.name,
            "n_classes": editor.domain.n_classes, "mask_size": editor.size, "variants": variants,
            "generator_size": editor.pipeline.generator.config.size, "repeats": repeats,
            "update_ms_median": round(_median(times), 1), "update_ms_min": round(min(times), 1),
            "update_ms_max": round(max(times), 1), "compile_s": round(editor.compile_s, 1), **device_info(),
            **_host_context()}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.bench == "app":  # one line of its own: the comparison table below is for original-vs-ours paths
        try:
            row = bench_app(args.checkpoint, args.variants, args.repeats or 20, args.seed)
        except (ValueError, TorchFileError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if args.json_out is not None:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.json_out, "a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
        else:
            print(json.dumps(row, sort_keys=True))
        print(f"app: {row['update_ms_median']:.0f} ms per update (median of {row['repeats']}; image + "
              f"{row['variants']} variants at {row['mask_size']}px, {row['generator_size']}px generator, domain "
              f"{row['domain']}; {row['device']} x{row['cpu_count']} cores; compile {row['compile_s']} s)",
              file=sys.stderr if args.json_out is None else sys.stdout)
        return 0
    try:
        preset = PRESETS[args.config or ("tiny" if args.quick else "ffhq")]
        batches = _parse_batches(args.batch or (_QUICK_BATCH if args.quick else _DEFAULT_BATCH)[args.bench])
        repeats = args.repeats if args.repeats is not None else (2 if args.quick else 3)
        steps = args.steps if args.steps is not None else (2 if args.quick else 5)
        if repeats < 1 or steps < 1 or args.vectors_per_class < 1:
            raise BenchError("--repeats, --steps and --vectors-per-class must be >= 1")
        if args.bench != "labeling" and args.dtype != "float32":
            raise BenchError(f"{args.bench} runs in float32 only; --dtype bfloat16 applies to labeling")
        if args.bench != "labeling" and args.weights:
            raise BenchError("--weights applies to labeling only")
        max_gb = args.max_memory_gb
        if max_gb is None and jax.devices()[0].platform == "cpu":
            max_gb = 12.0
        if args.bench == "labeling":
            rows = bench_labeling(preset, args.mode, batches, args.dtype, repeats, args.vectors_per_class,
                                  max_memory_gb=max_gb, torch_row=not (args.no_torch or args.quick), seed=args.seed,
                                  weights=args.weights)
        elif args.bench == "train-step":
            rows = bench_train_step(preset, args.mode, batches, repeats, args.vectors_per_class, max_gb, args.seed)
        else:
            # --quick: 64x64 targets (LPIPS at 256 dominates a tiny-generator step) and no extra FLOPs compile.
            rows = bench_inversion(preset, batches, steps, repeats, args.seed, xla_flops=not args.quick,
                                   target_size=64 if args.quick else LABEL_SIZE)
    except (BenchError, ConversionError, TorchFileError) as e:  # bad options, unreadable --weights
        print(f"error: {e}", file=sys.stderr)
        return 2
    lines = [json.dumps(row, sort_keys=True) for row in rows]
    table = format_table(rows)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.json_out, "a") as f:
            f.write("".join(line + "\n" for line in lines))
        print(table)
    else:
        print("\n".join(lines))
        print(table, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
