"""The original's labelling, restated for the benchmark's two "original" paths (issue #4).

``original-jax``: psp.py's sparse structure on our ops (psp.py:256-277): per sample, per class c >= 1, one jitted
device call (similarity matmul, top-k, descending sort of the 3*N_c pairs), a device->host copy and ``np.unique``
on the host (the original's ``.cpu()`` round trip), then the running-best update.

``original-torch``: rosinality's ``Generator`` (the copy vendored by the ``draggan`` package: the same
``model.py`` the original forks) renders every sample at full resolution, the 64x64 feature tap is read from the
second StyledConv of the 64x64 block (the original's ``return_feature_map``, here a forward hook), and the labels
are computed as ``models/psp.py`` computes them: dense by one matmul and an argmax, sparse by a loop over samples
and classes with a sort, ``np.unique`` on the host and a running best (psp.py:221-277). Both sparse paths run
:func:`smis_jax.labeling.original_sparse_loop`, the loop the parity tests check; only the per-class step (matmul,
top-k, sort) is theirs. The running best is kept in numpy on the host in both (a few 4096-element updates per
class; the original keeps it in torch).
The image is average-pooled to 256x256 as the original's ``face_pool`` does.

The PyTorch side is optional: :func:`load_reference` raises :class:`Unavailable` (why, and how to install what is
missing) when torch or draggan is not importable. torch is imported lazily so the rest of the benchmark never
needs it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from smis_jax.errors import UserError
from smis_jax import labeling
from smis_jax.bench.presets import LABEL_SIZE
from smis_jax.io.converted import StateDict
from smis_jax.io.stylegan2 import generator_from_state_dict
from smis_jax.nets.stylegan2 import FEATURE_RES, GeneratorConfig


@dataclass
class TorchReference:
    """rosinality's generator in eval mode with a hook that keeps the 64x64 features of the last call."""

    generator: Any
    config: GeneratorConfig
    params: dict  # the same weights as ours: {'params': tree}, float32 numpy
    tap: dict

    @property
    def threads(self) -> int:
        import torch

        return torch.get_num_threads()

    @property
    def torch_version(self) -> str:
        import torch

        return torch.__version__


class Unavailable(UserError):
    """The original-torch path cannot run here; the message says why (and, where it is an install, how)."""


INSTALL = "pip install torch==2.13.0, then pip install --no-deps draggan==1.1.6 tqdm"


def import_generator():
    """(torch, rosinality's ``Generator`` class as draggan vendors it); :class:`Unavailable` naming the package
    that failed to import, the error, and the install commands."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.environ.pop("CUDA_HOME", None)  # its CUDA ops must fall back to the native (CPU) ones
        try:
            import torch
        except Exception as e:  # ImportError, or a broken install failing in its own way
            raise Unavailable(f"torch is not importable ({_first_line(e)}); to include it: {INSTALL}") from None
        try:
            from draggan.deprecated.stylegan2.model import Generator
        except Exception as e:
            raise Unavailable(f"draggan is not importable ({_first_line(e)}); to include it: {INSTALL}") from None
    return torch, Generator


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def load_reference(gcfg: GeneratorConfig, channel_multiplier: int, seed: int = 0,
                   state_dict: dict[str, Any] | None = None) -> TorchReference:
    """The PyTorch generator at ``gcfg``'s shapes, with rosinality's own (seeded) random initialisation or
    ``state_dict`` (a ``g_ema``), and the same weights converted to ours by the shipped converter.
    :class:`Unavailable` when torch/draggan are missing or ``gcfg`` is not a rosinality layout (style_dim 512,
    its channel table)."""
    torch, Generator = import_generator()
    if gcfg.style_dim != 512 or gcfg.channels != GeneratorConfig.rosinality(gcfg.size, channel_multiplier).channels:
        raise Unavailable(f"the {gcfg.size}px generator (style_dim {gcfg.style_dim}) is not in rosinality's layout "
                          "(style_dim 512, its channel table); the ffhq, church, car and ukiyoe configs are")
    torch.manual_seed(seed)
    g = Generator(gcfg.size, gcfg.style_dim, gcfg.n_mlp, channel_multiplier=channel_multiplier).eval()
    if state_dict is not None:
        g.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}, strict=True)
    sd = StateDict({k: v.detach().numpy() for k, v in g.state_dict().items()}, source="torch generator")
    config, params, _ = generator_from_state_dict(sd)
    sd.finish()
    if config != gcfg:
        raise Unavailable(f"the PyTorch generator converts to {config}, not to the benchmarked {gcfg}")
    tap: dict = {}
    feature_conv = 2 * int(np.log2(FEATURE_RES // 4)) - 1  # convs[7]: the 64x64 block's second StyledConv
    g.convs[feature_conv].register_forward_hook(lambda module, args, out: tap.__setitem__("features", out))
    return TorchReference(g, config, params, tap)


def inputs(z: np.ndarray, noise: Sequence[np.ndarray]):
    """Our z (B, D) and noise list of (B|1, r, r, 1) as the torch tensors the generator takes ((B, 1, r, r))."""
    import torch

    return torch.from_numpy(np.array(z, np.float32)), [
        torch.from_numpy(np.array(np.asarray(n).transpose(0, 3, 1, 2), np.float32)) for n in noise]


def dense_prototypes(vectors: np.ndarray):
    import torch

    return torch.from_numpy(np.array(vectors, np.float32))


def sparse_vectors(per_class: Sequence[Any]):
    """The original's ``id2prototype`` list from one (N_c, C) array per class (class 0's is never used)."""
    import torch

    return [torch.from_numpy(np.array(v, np.float32)) for v in per_class]


# rosinality's native (CPU) upfirdn2d holds several padded copies of each 1024 px activation: a full render at
# batch 4 peaks at ~7 GB and takes ~7 s per sample, batch 16 does not fit in 23 GB, while one sample at a time
# takes ~4.3 s per sample on the 2-core machine of BENCHMARKS.md. So a batch is rendered in chunks of this many
# samples, one after another: the original's fastest way here, which keeps its timings conservative.
MAX_CHUNK = 1


def labels(ref: TorchReference, z, noise, mode: str, protos, topk: int = 3, cos_th: float = 0.5,
           out_size: int = 256) -> np.ndarray:
    """Render z with the given noise and pseudo-label it the original's way: (B, out_size, out_size) integers."""
    import torch
    import torch.nn.functional as F

    out = []
    with torch.no_grad():
        for start in range(0, z.shape[0], MAX_CHUNK):
            part = slice(start, start + MAX_CHUNK)
            image, _ = ref.generator([z[part]], noise=[n if n.shape[0] == 1 else n[part] for n in noise])
            F.adaptive_avg_pool2d(image, (out_size, out_size))  # face_pool, as the original returns its images
            out.append(label_features(ref.tap.pop("features"), mode, protos, topk, cos_th, out_size))
    return np.concatenate(out)


def label_features(f, mode: str, protos, topk: int = 3, cos_th: float = 0.5, out_size: int = 256) -> np.ndarray:
    """psp.py's labelling of (B, C, H, W) torch features: ``protos`` is the (L, C) tensor (dense) or the list of
    per-class (N_c, C) tensors (sparse). Returns (B, out_size, out_size) numpy integers."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        b, c, h, w = f.shape
        fn = f / (f.norm(dim=1)[:, None] + labeling.EPS)
        if mode == "dense":
            cos = torch.matmul(protos, fn.reshape(b, c, h * w)).reshape(b, -1, h, w)
            label = cos.argmax(dim=1)[:, None].float()
            return F.interpolate(label, size=(out_size, out_size)).long()[:, 0].numpy()
        return labeling.original_sparse_loop(fn.reshape(b, c, h * w), protos, _torch_class_pairs, topk, cos_th, h,
                                             out_size)


def _torch_class_pairs(v_nC, fn_CP, topk: int):
    """psp.py's per-class step in torch: similarities, each vector's top-k pixels, all pairs sorted by value
    (descending), brought to the host as the original's ``.cpu()`` does."""
    import torch

    sim = torch.matmul(v_nC, fn_CP)  # (N_c, H*W)
    val, pix = torch.topk(sim, topk, dim=1)
    val, order = torch.sort(val.flatten(), descending=True)
    return val.cpu().numpy(), pix.flatten()[order].cpu().numpy()


# ---------------------------------------------------------------------------------------------------------------
# original-jax: the original's sparse labelling structure (psp.py:256-277), per sample, per class, a host round trip.

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


def vectors_by_class(protos: labeling.SparsePrototypes) -> list[jax.Array]:
    """The original's ``vecs``: one (N_c, C) device array per class (class 0 included, never used)."""
    classes = np.asarray(protos.classes)
    vectors = np.asarray(protos.vectors)
    return [jnp.asarray(vectors[classes == c]) for c in range(protos.n_classes)]


def _device_class_pairs(v_nC, fn_PC, topk: int):
    """:func:`_class_pairs` and the original's ``.cpu()`` round trip of its result."""
    val, pix = _class_pairs(v_nC, fn_PC, topk)
    return np.asarray(val), np.asarray(pix)


def original_sparse_labels(features_NHWC, vecs: Sequence[jax.Array], topk: int = 3, cos_th: float = 0.5,
                           out_size: int = LABEL_SIZE) -> np.ndarray:
    """psp.py's sparse pseudo-labelling loop on our ops: (B, H, W, C) features -> (B, out_size, out_size) int32.

    :func:`smis_jax.labeling.original_sparse_loop` (the loop the parity tests check) with the device call
    :func:`_class_pairs` as its per-class step; the pairs come to the host for ``np.unique`` and the running best
    (in numpy: on a CPU "device" that is host memory anyway, which favours the original)."""
    return labeling.original_sparse_loop(_unit_pixels(features_NHWC), vecs, _device_class_pairs, topk, cos_th,
                                         features_NHWC.shape[1], out_size)


def class_pair_flops(vecs: Sequence[jax.Array], p: int) -> float:
    """Similarity matmul FLOPs of one sample's per-class loop (top-k and sort ignored)."""
    return sum(2.0 * v.shape[0] * v.shape[1] * p for v in vecs[1:])

