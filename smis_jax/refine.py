"""Post-refinement of the encoder's W+ codes so the generator's 64x64 features agree with the mask.

Two methods, both jitted and batched over masks (one program per Adam step for B masks, looped in Python; each mask
has its own Adam state, since Adam is element-wise and the batch loss is the sum of the per-mask losses):

* ``original``: the extended release's ``scripts/inference_w_post.py`` (SPEC 1g), exact. A per-layer PCA of sampled
  W+ (:func:`compute_pca`); the top-8 PCA coefficients of **layer 0** are optimised; layers 0..L-1 (L = 8) are
  rebuilt from layer 0's coefficients with each layer's basis and mean, layers >= L stay the encoder's; Adam
  lr 0.05, the generator's stored noise; loss ``1 - mean_pixels cos(F64, P[class(pixel)])`` with the **dense**
  prototypes (even for sparse sets), class-0 pixels masked (cosine 0, still counted in the mean) for sparse sets.
* ``wplus`` (ours, beyond the original): all of W+ (or a chosen set of layers) is optimised directly with a
  label-space loss against the mask's class (sparse: over annotated pixels only), plus
  ``proximity * mean((w - w_encoder)^2)`` over the optimised layers. The label model (``scorer``) is the run's own
  ``linear`` labeller (its softmax over multi-scale features) when there is one, else
  ``softmax(cos(F64, P) / temperature)`` with the prototypes.
* ``fs`` (ours, beyond the original): ``wplus`` plus a **spatial** latent, an offset added to the output of one
  generator block (``feature_res``, default the 8x8 block), optimised with the codes (``layers``; by default, as
  :func:`default_options` gives it, none: the offset alone on the encoder's codes): the F of Barbershop's FS space
  (Zhu et al. 2021, where F is a 32x32 block of a 1024 px generator). W+ styles act on the whole image; an offset
  on a coarse block can put an object where the mask asks and the encoder drew none. The offset is in units of the
  block's own standard deviation at the encoder's codes (per mask), steps ``feature_lr`` in those units and pays
  ``feature_proximity * mean(offset^2)``; the same scorers as ``wplus``. :class:`Result` carries the offset, and
  :func:`render` / :func:`smis_jax.synthesize.decode` take it.

Masks come at any size and are reduced to 64x64 with torch's ``nearest`` rule (source pixel ``floor(i * H / 64)``,
:func:`labels_to_64`; ``x[::4, ::4]`` for 256), as :mod:`smis_jax.labeling` does, so refinement does not depend on
the encoder's input size. Codes are full W+ (latent_avg included), as the original's ``return_latents`` gives.

Quirks of the original kept on purpose (see docs/notes-22.md): the sampled W+ of the PCA has the same w on every
layer (pSp feeds one style, no mixing), so every layer's basis and mean are the same and layers 1..L-1 become
layer 0's reconstruction from iteration 0 on (also with ``steps=0``); masked pixels count in the mean; ``steps``
counts Adam updates (the original runs 201 iterations and its last saved image, iteration 200, is the render after
200 updates). Changed on purpose: the PCA is computed from ``jax.random.key(0)`` in float64 with one basis shared
by the layers (the same numbers the per-layer computation gives), instead of a fresh CUDA draw saved to
``pca.pt``; :func:`compute_pca` takes about a second, so it is recomputed (and cached per generator in the
process) rather than written into the export.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
import jax
import jax.numpy as jnp
import numpy as np
import optax

from smis_jax import builtin, data, labelers, labeling
from smis_jax.config import DOMAINS, ConfigError
from smis_jax.errors import InvalidValueError
from smis_jax.nets import ops
from smis_jax.nets.stylegan2 import FEATURE_RES, Generator, LoadedGenerator

__all__ = ["METHODS", "SCORERS", "PCA", "Options", "Result", "compute_pca", "pca_from_w", "labels_to_64", "refine",
           "render", "dense_prototypes", "prototypes_for", "default_options", "resolve_scorer",
           "check_scorer", "linear_loss", "add_offsets"]

METHODS = ("original", "wplus", "fs")
SCORERS = ("auto", "prototypes", "labeler")  # wplus: cos(F64, P) / T, or the run's `linear` labeller's logits
PCA_SAMPLES = 1024  # the original's N
EPS = 1e-8  # torch.nn.functional.cosine_similarity's eps
_PRECISION = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class PCA:
    """Per-layer PCA of sampled W+: mean (S, D), vectors (S, D, D) (columns, ascending eigenvalues), values (S, D)."""

    mean: np.ndarray
    vectors: np.ndarray
    values: np.ndarray


@dataclasses.dataclass(frozen=True)
class Options:
    """Refinement settings. ``steps`` = Adam updates. ``original``: ``lr``, ``top`` coefficients of layer 0,
    ``rebuilt`` = L layers. ``wplus``: ``lr``, ``layers`` (None: all), ``temperature``, ``proximity``, ``scorer``
    (``prototypes``: ``softmax(cos(F64, P) / temperature)``; ``labeler``: the softmax of the run's ``linear``
    labeller over its multi-scale features, the classifier that made the encoder's pseudo-labels; ``auto``:
    ``labeler`` when :func:`refine` is given a ``linear`` labeller, else ``prototypes``). ``fs``: those of
    ``wplus`` plus the spatial offset's block ``feature_res``, step ``feature_lr`` (in the block's standard
    deviations) and ``feature_proximity``."""

    method: str = "wplus"
    steps: int = 50
    lr: float = 0.05
    top: int = 8
    rebuilt: int = 8
    layers: tuple[int, ...] | None = None
    temperature: float = 0.1
    proximity: float = 3.0
    scorer: str = "auto"
    feature_res: int = 8
    feature_lr: float = 0.1
    feature_proximity: float = 1.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise InvalidValueError(f"refinement method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if int(self.steps) < 0:
            raise InvalidValueError(f"refinement steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise InvalidValueError(f"refinement learning rate must be > 0, got {self.lr}")
        if not self.temperature > 0:
            raise InvalidValueError(f"refinement temperature must be > 0, got {self.temperature}")
        if self.proximity < 0:
            raise InvalidValueError(f"refinement proximity weight must be >= 0, got {self.proximity}")
        if self.scorer not in SCORERS:
            raise InvalidValueError(f"refinement scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")
        if self.scorer == "labeler" and self.method == "original":
            raise InvalidValueError(f"scorer {self.scorer!r} is for --refine wplus or fs; the original scores with "
                                    f"its prototypes")
        if self.feature_res not in (8, 16, 32, 64):
            raise InvalidValueError(f"refinement feature_res must be a block of 8, 16, 32 or 64, got "
                                    f"{self.feature_res!r}")
        if not self.feature_lr > 0:
            raise InvalidValueError(f"refinement feature_lr must be > 0, got {self.feature_lr}")
        if self.feature_proximity < 0:
            raise InvalidValueError(f"refinement feature_proximity must be >= 0, got {self.feature_proximity}")
        if self.top < 1 or self.rebuilt < 1:
            raise InvalidValueError(f"refinement top and rebuilt must be >= 1, got {self.top}, {self.rebuilt}")


def default_options(method: str, steps: int | None = None, **overrides) -> Options:
    """The defaults of each method: ``original`` as the script (lr 0.05, 200 updates = its last saved image),
    ``wplus`` and ``fs`` ours (lr 0.05, 50 updates, temperature 0.1, proximity 3, scorer auto; ``fs``: the 8x8
    block's offset alone on the encoder's codes, ``layers=()``, step 0.1, feature proximity 1)."""
    if method == "original":
        base = Options("original", 200 if steps is None else steps, lr=0.05)
    elif method == "fs":  # the offset alone on the encoder's codes measured best (docs/notes-22.md)
        base = Options("fs", 50 if steps is None else steps, layers=())
    else:
        base = Options(method, 50 if steps is None else steps)
    return dataclasses.replace(base, **overrides)


@dataclasses.dataclass(frozen=True)
class Result:
    """w_plus (B, S, D) refined W+ (latent_avg included); losses (B, steps + 1): the loss at iterations
    0..steps-1 (before each update) and after the last update; offsets: the spatial latent {res: (B, r, r, C)}
    for the generator: ``fs``'s plus the encoder's (an offset head's, kept by every method), None for neither."""

    w_plus: jax.Array
    losses: np.ndarray
    options: Options
    offsets: dict[int, jax.Array] | None = None


# ---------------------------------------------------------------------------------------------------------------
# PCA

def pca_from_w(w: np.ndarray, n_latent: int) -> PCA:
    """The original's per-layer PCA of W+ samples that repeat one w (N, D) on every layer: mean, covariance
    ``dev^T dev / N``, ``eigh`` (ascending; ``torch.symeig``'s order). Computed in float64, stored float32."""
    w = np.asarray(w, np.float64)
    n, d = w.shape
    mu = w.mean(0)
    dev = w - mu
    values, vectors = np.linalg.eigh(dev.T @ dev / n)
    rep = lambda a: np.broadcast_to(a.astype(np.float32), (n_latent, *a.shape))  # noqa: E731
    return PCA(rep(mu), rep(vectors), rep(values))


_PCA_CACHE: "weakref.WeakKeyDictionary[LoadedGenerator, PCA]" = weakref.WeakKeyDictionary()


def compute_pca(generator: LoadedGenerator, key: jax.Array | None = None, n: int = PCA_SAMPLES) -> PCA:
    """PCA of ``n`` sampled W+ (``mapping(z)``, z ~ N(0, I) from ``key``, default ``key(0)``); cached per generator."""
    if key is None and n == PCA_SAMPLES and generator in _PCA_CACHE:
        return _PCA_CACHE[generator]
    k = jax.random.key(0) if key is None else key
    z = jax.random.normal(k, (n, generator.config.style_dim), jnp.float32)
    out = pca_from_w(np.asarray(generator.mapping(z)), generator.config.n_latent)
    if key is None and n == PCA_SAMPLES:
        _PCA_CACHE[generator] = out
    return out


# ---------------------------------------------------------------------------------------------------------------
# Masks and prototypes

def labels_to_64(labels, n_classes: int) -> np.ndarray:
    """(B, H, W) class ids at any size -> (B, 64, 64) int32 by torch's nearest rule (source ``floor(i * H / 64)``)."""
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[1] < 1 or labels.shape[2] < 1:
        raise InvalidValueError(f"masks must be (B, H, W) class ids, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise InvalidValueError(f"mask values must be class ids in 0..{n_classes - 1}, got {labels.min()}..{labels.max()}")
    h, w = labels.shape[1:]
    # torch: scale = in / out in float32, src = min(floor(dst * scale), in - 1)
    rows = np.minimum(np.floor(np.arange(FEATURE_RES, dtype=np.float32) * np.float32(h / FEATURE_RES)), h - 1)
    cols = np.minimum(np.floor(np.arange(FEATURE_RES, dtype=np.float32) * np.float32(w / FEATURE_RES)), w - 1)
    return labels[:, rows.astype(np.int64)][:, :, cols.astype(np.int64)].astype(np.int32)


def dense_prototypes(protos) -> labeling.DensePrototypes:
    """The dense prototypes refinement uses. Dense: as they are. Sparse (no dense set at hand): each class's mean
    annotated unit vector, L2-normalised (an approximation of the original's ``compute_rep_vec``; prefer the
    shots' dense prototypes where the masks are at hand)."""
    if isinstance(protos, labeling.DensePrototypes):
        return protos
    if not isinstance(protos, labeling.SparsePrototypes):
        raise InvalidValueError(f"refinement needs dense or sparse prototypes, got {type(protos).__name__}")
    v, cls = np.asarray(protos.vectors, np.float32), np.asarray(protos.classes)
    sums = np.zeros((protos.n_classes, v.shape[1]), np.float32)
    np.add.at(sums, cls, v)
    present = np.bincount(cls, minlength=protos.n_classes) > 0
    sums /= np.linalg.norm(sums, axis=-1, keepdims=True) + np.float32(labeling.EPS)
    return labeling.DensePrototypes(vectors=jnp.asarray(sums), present=jnp.asarray(present))


def prototypes_for(run_export) -> tuple[labeling.DensePrototypes, bool]:
    """(dense prototypes, sparse?) for an export (:class:`smis_jax.export.RunExport`).

    Dense domains: the export's prototypes. Sparse domains: the original's ``compute_rep_vec``, i.e. dense
    prototypes of the shots' sparse masks (class 0 = the unannotated pixels), rebuilt for the built-in domains
    from the export's shot codes and the built-in shots with the run's seeded noise (as ``train.run`` builds its
    prototypes); other sparse exports get :func:`dense_prototypes`' approximation. Other domains' ``linear`` runs
    keep no prototypes: (None, sparse?), which :func:`refine` accepts for ``wplus`` scored by that labeller."""
    labeler = labelers.as_labeler(run_export.prototypes)  # an export's labeller (--labeler), paper's when old
    protos, sparse = labeler.protos, not labeler.dense
    if labeler.kind == "paper" and isinstance(protos, labeling.DensePrototypes):
        return protos, False
    domain = DOMAINS.get(str(run_export.run.get("domain")))
    shots = run_export.shots
    if domain is not None and domain.builtin and shots is not None and len(shots.names):
        # the paper's dense prototypes of the shots (another --labeler keeps none): what train.run builds for paper
        _, _, masks = builtin.shots(domain, shots.names)
        seed = int(run_export.run.get("train", {}).get("seed", 0))
        _, key_proto = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1))
        _, features = run_export.pipeline.generator.synthesize(jnp.asarray(shots.w_plus), key=key_proto,
                                                               until_res=FEATURE_RES)
        return labeling.prototypes(features, data.onehot(masks, domain.n_classes), mode="dense"), sparse
    if labeler.kind == "linear":  # no prototypes: wplus scores with the labeller itself (refine(labeler=...))
        return None, sparse
    if labeler.kind != "paper":
        raise ConfigError(f"{run_export.path}: refinement scores with the paper's prototypes, and this export's "
                          f"--labeler {labeler.kind} keeps none; train with --labeler paper to refine its results")
    return dense_prototypes(protos), True


# ---------------------------------------------------------------------------------------------------------------
# The jitted loops

def _features(gen_cfg, gen_params, noise, w_plus, offsets=None):
    _, f = Generator(gen_cfg).apply(gen_params, w_plus, noise, FEATURE_RES, offsets=offsets)
    return f.astype(jnp.float32)  # (B, 64, 64, C)


def _safe_norm(x):
    return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1), 1e-30))


def original_loss(features, labels64, proto_vectors, ignore0):
    """The script's ``optimization_loss`` per mask (B,): ``1 - mean_pixels cos(F, P[label])`` with torch's
    ``cosine_similarity`` (each norm clamped at 1e-8); pixels of class 0 give cosine 0 when ``ignore0``."""
    b = features.shape[0]
    f = features.reshape(b, -1, features.shape[-1])  # (B, P, C)
    target = proto_vectors[labels64.reshape(b, -1)]  # (B, P, C)
    dot = jnp.einsum("bpc,bpc->bp", f, target, precision=_PRECISION)
    cos = dot / (jnp.maximum(_safe_norm(f), EPS) * jnp.maximum(_safe_norm(target), EPS))
    keep = jnp.logical_not(jnp.logical_and(ignore0, labels64.reshape(b, -1) == 0))
    return 1.0 - jnp.mean(jnp.where(keep, cos, 0.0), axis=1)


def wplus_loss(features, labels64, proto_vectors, present, ignore0, temperature):
    """Cross-entropy of ``softmax(cos(F, P) / T)`` over the present classes against the mask (B,), averaged over
    the pixels whose class has a prototype (and, when ``ignore0``, is not class 0)."""
    b = features.shape[0]
    f = features.reshape(b, -1, features.shape[-1])
    f = f / (_safe_norm(f)[..., None] + labeling.EPS)
    cos = jnp.einsum("bpc,lc->bpl", f, proto_vectors, precision=_PRECISION)
    logits = jnp.where(present, cos / temperature, -1e30)
    lab = labels64.reshape(b, -1)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), lab[..., None], axis=-1)[..., 0]
    valid = present[lab] & jnp.logical_not(jnp.logical_and(ignore0, lab == 0))
    return jnp.sum(jnp.where(valid, nll, 0.0), axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1)


def linear_loss(features, labels64, weight, bias, present, ignore0, shifted):
    """Cross-entropy of a ``linear`` labeller's softmax against the mask (B,), over the pixels whose class the
    labeller knows (and, when ``ignore0``, is not class 0). ``shifted``: a sparse labeller's rows are classes 1..
    (class 0 = not annotated)."""
    b = features.shape[0]
    f = features.reshape(b, -1, features.shape[-1]).astype(jnp.float32)
    logits = jnp.einsum("bpc,cl->bpl", f, weight, precision=_PRECISION) + bias
    logits = jnp.where(present, logits, -1e30)
    lab = labels64.reshape(b, -1)
    row = jnp.maximum(lab - shifted.astype(lab.dtype), 0)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), row[..., None], axis=-1)[..., 0]
    known = present[row] & jnp.logical_not(jnp.logical_and(shifted, lab == 0))
    valid = known & jnp.logical_not(jnp.logical_and(ignore0, lab == 0))
    return jnp.sum(jnp.where(valid, nll, 0.0), axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1)


@functools.lru_cache(maxsize=None)
def _adam_step(loss):
    """One jitted Adam update (torch defaults: betas 0.9/0.999, eps 1e-8) of ``sum_b loss(p, *args)_b``:
    ``(p, state, lr, *args) -> (p, state, loss before the update (B,))``, p and state donated.

    The driver (:func:`_adam_run`) loops in Python. The same updates as a ``lax.fori_loop`` inside one program ran
    2.5x slower: XLA:CPU runs a loop's body slower than the same computation outside a loop (BENCHMARKS.md)."""
    grad_fn = jax.value_and_grad(lambda p, *a: (lambda l: (jnp.sum(l), l))(loss(p, *a)), has_aux=True)

    def step(p, state, lr, *args):
        (_, per), g = grad_fn(p, *args)
        updates, state = optax.adam(lr).update(g, state, p)
        return optax.apply_updates(p, updates), state, per

    return jax.jit(step, donate_argnums=(0, 1))


@functools.lru_cache(maxsize=None)
def _adam_final(loss, codes):
    """Jitted ``(p, *args) -> (codes(p, *args), loss(p, *args))``: the refined W+ and the loss after the last update."""
    return jax.jit(lambda p, *args: (codes(p, *args), loss(p, *args)))


def _adam_run(loss, codes, p, args, steps: int, lr) -> tuple[jax.Array, np.ndarray]:
    """``steps`` Adam updates of ``p`` from :func:`_adam_step`; returns (``codes(p, *args)``, history (steps + 1, B))
    where history[i] is the loss before update i and history[steps] the final loss. ``codes`` takes ``loss``'s
    arguments."""
    step = _adam_step(loss)
    state = optax.adam(lr).init(p)
    hist = []
    for _ in range(steps):
        p, state, per = step(p, state, lr, *args)
        hist.append(per)
    out, last = _adam_final(loss, codes)(p, *args)
    return out, np.stack([np.asarray(h) for h in hist + [last]])


@functools.lru_cache(maxsize=None)
def _original_fns(gen_cfg, top: int, rebuilt: int):
    """(prepare, loss, codes) of the original: the layer-0 PCA coefficients' top ``top`` are optimised."""

    def prepare(w0, mean, vectors):
        # mean (L, D), vectors (L, D, D): the first ``rebuilt`` layers' PCA; g0: the script's g_partial[:1]
        g0 = jnp.einsum("de,be->bd", jnp.linalg.inv(vectors[0]), w0[:, 0] - mean[0], precision=_PRECISION)
        return g0[:, w0.shape[-1] - top:], g0  # st_dim = D - top, ed_dim = D

    def codes(coeffs, gen_params, noise, w0, labels64, proto_vectors, ignore0, mean, vectors, g0, base):  # W+
        g = jnp.concatenate([g0[:, :w0.shape[-1] - top], coeffs], axis=1)  # (B, D)
        rebuilt_codes = jnp.einsum("lde,be->bld", vectors, g, precision=_PRECISION) + mean[None]
        return jnp.concatenate([rebuilt_codes, w0[:, rebuilt:]], axis=1)

    def loss(coeffs, gen_params, noise, w0, labels64, proto_vectors, ignore0, mean, vectors, g0, base):
        w = codes(coeffs, gen_params, noise, w0, labels64, proto_vectors, ignore0, mean, vectors, g0, base)
        return original_loss(_features(gen_cfg, gen_params, noise, w, base), labels64, proto_vectors, ignore0)

    return jax.jit(prepare), loss, codes


def _prototype_score(features, labels64, ignore0, proto_vectors, present, temperature):
    return wplus_loss(features.astype(jnp.float32), labels64, proto_vectors, present, ignore0, temperature)


def _labeler_score(features, labels64, ignore0, weight, bias, present, shifted):
    return linear_loss(features, labels64, weight, bias, present, ignore0, shifted)


@functools.lru_cache(maxsize=None)
def _wplus_fns(gen_cfg, taps: tuple[int, ...], score):
    """(loss, codes) of ours: an offset ``delta`` on the selected layers of W+ is optimised; ``score(features of
    the blocks taps, labels64, ignore0, *score_args)`` is the label-space term (:func:`_prototype_score` or
    :func:`_labeler_score`)."""

    def codes(delta, gen_params, noise, w0, labels64, ignore0, layer_mask, proximity, score_args, base):
        return w0 + delta * layer_mask[None, :, None].astype(jnp.float32)

    def loss(delta, gen_params, noise, w0, labels64, ignore0, layer_mask, proximity, score_args, base):
        sel = layer_mask[None, :, None].astype(jnp.float32)
        n_sel = jnp.maximum(jnp.sum(layer_mask), 1) * w0.shape[-1]
        features = labelers.label_features(gen_cfg, gen_params, w0 + delta * sel, noise, taps, offsets=base)
        ce = score(features, labels64, ignore0, *score_args)
        return ce + proximity * jnp.sum((delta * sel) ** 2, axis=(1, 2)) / n_sel

    return loss, codes


@functools.lru_cache(maxsize=None)
def _fs_fns(gen_cfg, taps: tuple[int, ...], score, res: int):
    """(prepare, loss, codes) of ``fs``: ``p = {"w": delta (B, S, D), "f": u (B, r, r, C)}``; the offset on block
    ``res`` is ``u * step_ratio * scale`` with ``scale`` (B,) the block's standard deviation at the encoder's codes
    (``prepare``), so that Adam at ``lr`` moves it ``feature_lr`` (= lr * step_ratio) standard deviations a step."""

    def prepare(gen_params, noise, w0, base):
        _, sown = Generator(gen_cfg).apply(gen_params, w0, noise, until_res=FEATURE_RES, offsets=base,
                                           mutable=["taps"])
        return jnp.std(sown["taps"][f"res{res}"][0].astype(jnp.float32), axis=(1, 2, 3))

    def offsets(p, ratio, scale, base):
        return add_offsets(base, {res: p["f"] * (ratio * scale)[:, None, None, None]})

    def codes(p, gen_params, noise, w0, labels64, ignore0, layer_mask, proximity, f_prox, ratio, scale, score_args,
              base):
        return w0 + p["w"] * layer_mask[None, :, None].astype(jnp.float32), offsets(p, ratio, scale, base)

    def loss(p, gen_params, noise, w0, labels64, ignore0, layer_mask, proximity, f_prox, ratio, scale, score_args,
             base):
        sel = layer_mask[None, :, None].astype(jnp.float32)
        n_sel = jnp.maximum(jnp.sum(layer_mask), 1) * w0.shape[-1]
        features = labelers.label_features(gen_cfg, gen_params, w0 + p["w"] * sel, noise, taps,
                                           offsets=offsets(p, ratio, scale, base))
        ce = score(features, labels64, ignore0, *score_args)
        return (ce + proximity * jnp.sum((p["w"] * sel) ** 2, axis=(1, 2)) / n_sel
                + f_prox * jnp.mean((p["f"] * ratio) ** 2, axis=(1, 2, 3)))

    return jax.jit(prepare), loss, codes


def add_offsets(a: dict | None, b: dict | None) -> dict | None:
    """The generator's ``offsets`` of two sources together (an encoder's offset head and a refinement): summed where
    both shift a block, merged otherwise; None when neither has any."""
    if not a or not b:
        return a or b or None
    return {r: a[r] + b[r] if r in a and r in b else a.get(r, b.get(r)) for r in sorted({*a, *b})}


def refine(generator: LoadedGenerator, prototypes, w_plus, labels, options: Options | None = None,
           sparse: bool = False, pca: PCA | None = None, labeler: labelers.Labeler | None = None,
           offsets: dict | None = None) -> Result:
    """Refine W+ codes against their masks.

    generator: the pipeline's (its stored noise is used). prototypes: dense (or sparse, see
    :func:`dense_prototypes`); None only for ``wplus``/``fs`` scored by a ``linear`` ``labeler``. w_plus: (B, S, D)
    full W+ (encoder codes + latent_avg). labels: (B, H, W) class ids at any size (reduced to 64x64 by
    :func:`labels_to_64`). sparse: class 0 means "not annotated" and is ignored.
    pca: for ``original``, the PCA to use (default :func:`compute_pca` of ``generator``).
    labeler: the run's labeller, needed by ``scorer="labeler"`` (a ``linear`` one: the export's ``prototypes``).
    offsets: the encoder's (its offset head's, :func:`smis_jax.synthesize.encode_with_offsets`), None for none:
    ``original`` and ``wplus`` keep them fixed, ``fs`` starts from them; :attr:`Result.offsets` holds them (with
    ``fs``'s own added) for :func:`render`.
    """
    base = None if offsets is None else {int(r): jnp.asarray(o, jnp.float32) for r, o in offsets.items()}
    options = options or Options()
    check_scorer(prototypes, options, labeler)
    scorer = resolve_scorer(options, labeler)
    # an export whose labeller keeps no prototypes (scorer "labeler" only, check_scorer says) has none to check
    protos = None if prototypes is None else dense_prototypes(prototypes)
    lab = _linear_labeler(labeler, protos.n_classes if protos is not None else labeler.n_classes, sparse) \
        if scorer == "labeler" else None
    cfg = generator.config
    w_plus = jnp.asarray(w_plus, jnp.float32)
    if w_plus.ndim != 3 or w_plus.shape[1:] != (cfg.n_latent, cfg.style_dim):
        raise InvalidValueError(f"codes must be (B, {cfg.n_latent}, {cfg.style_dim}), got {tuple(w_plus.shape)}")
    if protos is not None and protos.vectors.shape[-1] != cfg.feature_channels:
        raise InvalidValueError(f"prototypes have {protos.vectors.shape[-1]} channels, the generator's 64x64 "
                                f"features {cfg.feature_channels}")
    labels64 = labels_to_64(labels, protos.n_classes if protos is not None else lab.n_classes)
    if labels64.shape[0] != w_plus.shape[0]:
        raise InvalidValueError(f"{labels64.shape[0]} masks for {w_plus.shape[0]} codes")
    steps = int(options.steps)
    noise = list(generator.noises)[:cfg.num_noise_layers(FEATURE_RES)]
    common = (generator.params, noise, w_plus, jnp.asarray(labels64))
    lr = jnp.float32(options.lr)
    if options.method == "original":
        pca = pca or compute_pca(generator)
        n = min(options.rebuilt, cfg.n_latent)
        top = min(options.top, cfg.style_dim)
        prepare, loss, codes = _original_fns(cfg, top, n)
        mean, vectors = jnp.asarray(pca.mean[:n]), jnp.asarray(pca.vectors[:n])
        coeffs, g0 = prepare(w_plus, mean, vectors)
        args = (*common, jnp.asarray(protos.vectors, jnp.float32), jnp.bool_(sparse), mean, vectors, g0, base)
        out, hist = _adam_run(loss, codes, coeffs, args, steps, lr)
        offsets = base
    else:
        layers = range(cfg.n_latent) if options.layers is None else options.layers
        bad = [i for i in layers if not 0 <= int(i) < cfg.n_latent]
        if bad:
            raise InvalidValueError(f"refinement layers must be in 0..{cfg.n_latent - 1}, got {bad}")
        mask = np.zeros(cfg.n_latent, bool)
        mask[list(layers)] = True
        if scorer == "labeler":
            taps, score = tuple(lab.taps), _labeler_score
            score_args = (jnp.asarray(lab.weight, jnp.float32), jnp.asarray(lab.bias, jnp.float32),
                          jnp.asarray(lab.present), jnp.bool_(not lab.dense))
        else:
            taps, score = (FEATURE_RES,), _prototype_score
            score_args = (jnp.asarray(protos.vectors, jnp.float32), jnp.asarray(protos.present),
                          jnp.float32(options.temperature))
        if options.method == "wplus":
            loss, codes = _wplus_fns(cfg, taps, score)
            args = (*common, jnp.bool_(sparse), jnp.asarray(mask), jnp.float32(options.proximity), score_args, base)
            out, hist = _adam_run(loss, codes, jnp.zeros_like(w_plus), args, steps, lr)
            offsets = base
        else:
            res = int(options.feature_res)
            if res not in cfg.resolutions or res > FEATURE_RES:
                raise InvalidValueError(f"refinement feature_res {res} is not a block of this generator up to 64x64 "
                                        f"({', '.join(str(r) for r in cfg.resolutions if 8 <= r <= FEATURE_RES)})")
            prepare, loss, codes = _fs_fns(cfg, tuple(taps), score, res)
            scale = prepare(generator.params, noise, w_plus, base)
            p = {"w": jnp.zeros_like(w_plus),
                 "f": jnp.zeros((w_plus.shape[0], res, res, cfg.channel(res)), jnp.float32)}
            args = (*common, jnp.bool_(sparse), jnp.asarray(mask), jnp.float32(options.proximity),
                    jnp.float32(options.feature_proximity), jnp.float32(options.feature_lr / options.lr), scale,
                    score_args, base)
            (out, offsets), hist = _adam_run(loss, codes, p, args, steps, lr)
    return Result(out, hist.T, options, offsets)


def resolve_scorer(options: Options, labeler=None) -> str:
    """What ``wplus`` and ``fs`` score with: ``options.scorer``, with ``auto`` = ``labeler`` for a ``linear``
    labeller."""
    if options.method == "original":
        return "prototypes"
    if options.scorer == "auto":
        linear = isinstance(labeler, labelers.Labeler) and labeler.kind == "linear"
        return "labeler" if linear else "prototypes"
    return options.scorer


def check_scorer(prototypes, options: Options, labeler=None) -> None:
    """Raise a :class:`ConfigError` when ``options`` need prototypes and there are none (an export whose labeller
    keeps none): what :func:`refine` checks first, for callers that want to fail before any work."""
    if prototypes is None and resolve_scorer(options, labeler) != "labeler":
        kind = getattr(labeler, "kind", None)
        raise ConfigError(f"refinement '{options.method}' (scorer {options.scorer}) scores with the paper's "
                          f"prototypes, and there are none here (the run's labeller: {kind}); use --refine "
                          f"wplus or fs with a linear labeller, or train with --labeler paper")


def _linear_labeler(labeler, n_classes: int, sparse: bool) -> labelers.Labeler:
    if labeler is None or not isinstance(labeler, labelers.Labeler) or labeler.kind != "linear":
        got = "none" if labeler is None else getattr(labeler, "kind", type(labeler).__name__)
        raise ConfigError(f"refinement scorer 'labeler' needs the run's linear labeller (train.run --labeler "
                          f"linear, the built-in default); got {got}")
    if labeler.n_classes != n_classes:
        raise InvalidValueError(f"the labeller has {labeler.n_classes} classes, the prototypes {n_classes}")
    if labeler.dense == sparse:
        raise InvalidValueError(f"a {'dense' if labeler.dense else 'sparse'} labeller cannot score "
                                f"{'sparse' if sparse else 'dense'} masks")
    return labeler


@functools.lru_cache(maxsize=None)
def _render_fn(gen_cfg, out_size: int):
    def fn(gen_params, noise, w_plus, offsets):
        image, _ = Generator(gen_cfg).apply(gen_params, w_plus, noise, offsets=offsets)
        return ops.adaptive_avg_pool(image, (out_size, out_size))

    return jax.jit(fn)


def render(generator: LoadedGenerator, w_plus, out_size: int = 256, offsets=None) -> jax.Array:
    """W+ (B, S, D) -> images (B, out_size, out_size, 3) in [-1, 1] with the stored noise and pSp's face_pool
    (what :func:`smis_jax.synthesize.decode` gives for the encoder's codes); ``offsets``: a :class:`Result`'s
    (``fs``), None for none."""
    return _render_fn(generator.config, int(out_size))(generator.params, list(generator.noises), jnp.asarray(w_plus),
                                                       offsets)

