"""Ranger (RAdam + Lookahead + gradient centralisation) as one optax transformation, matching pSp's optimizer.

pSp (and Fewshot-SMIS) train and invert with ``training/ranger.py``. Per parameter, at step ``t`` (1-based):

1. gradient centralisation (tensors with more than one dimension): ``g -= mean(g over every axis but the output axis)``;
2. ``v = b2*v + (1-b2)*g^2``, ``m = b1*m + (1-b1)*g``;
3. ``N_t = N_max - 2t*b2^t/(1-b2^t)`` with ``N_max = 2/(1-b2) - 1``;
4. if ``N_t > threshold`` (strictly): ``p -= lr * r_t/(1-b1^t) * m/(sqrt(v)+eps)`` with the RAdam rectifier ``r_t``;
   else ``p -= lr/(1-b1^t) * m`` (bias-corrected momentum SGD); weight decay ``p -= wd*lr*p`` comes first;
5. Lookahead: the slow copy starts at the initial parameters; every ``k`` steps ``slow += alpha*(p - slow); p = slow``.

``optax.radam`` + ``optax.lookahead`` differ in the threshold (``>=``), the eps placement and the state layout, hence
this single transformation. Because of Lookahead it needs ``params`` in ``update``; the synchronisation ``p = slow``
is returned as an ordinary update (``slow - p``), so ``optax.apply_updates`` is all a caller does.

Which axis is the "output" axis depends on the layout. PyTorch keeps dim 0; in Flax trees it is the last axis of conv
kernels (HWIO) and Dense kernels ``(in, out)``, and the first axis of batched W+ codes ``(K, S, D)`` (each image's own
mean, so the K images of a batched inversion stay independent). ``gc_axes`` says which axis to keep per leaf.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

__all__ = ["RangerState", "ranger", "centralise_gradient"]

# int: keep that axis on every leaf with ndim > 1; pytree (same structure as params) of int | None per leaf;
# callable (path, leaf) -> int | None; None: the default rule (keep the last axis of every leaf with ndim > 1).
GcAxes = Union[None, int, Any, Callable[[tuple, jax.Array], Union[int, None]]]


class RangerState(NamedTuple):
    """Optimizer state: a pytree of arrays (checkpointable with orbax)."""

    count: jax.Array  # () int32, steps taken so far
    mu: optax.Updates  # first moments, like params
    nu: optax.Updates  # second moments, like params
    slow: optax.Params  # Lookahead's slow weights, like params


def centralise_gradient(g: jax.Array, keep_axis: int | None) -> jax.Array:
    """Subtract the mean of ``g`` over every axis except ``keep_axis``; no-op for ``None`` or ``g.ndim <= 1``.

    pSp centralises only tensors with more than one dimension (for a 1-D tensor, "all axes but the kept one" is
    empty and the gradient would be zeroed).
    """
    if keep_axis is None or g.ndim <= 1:
        return g
    if not -g.ndim <= keep_axis < g.ndim:
        raise ValueError(f"gradient centralisation: axis {keep_axis} is out of range for a {g.ndim}-D parameter")
    keep_axis %= g.ndim
    axes = tuple(a for a in range(g.ndim) if a != keep_axis)
    return g - jnp.mean(g, axis=axes, keepdims=True)


def _centralise_tree(grads: optax.Updates, gc_axes: GcAxes) -> optax.Updates:
    if gc_axes is None:
        return jax.tree.map(lambda g: centralise_gradient(g, -1), grads)
    if isinstance(gc_axes, int):
        return jax.tree.map(lambda g: centralise_gradient(g, gc_axes), grads)
    if callable(gc_axes):
        return jax.tree_util.tree_map_with_path(lambda path, g: centralise_gradient(g, gc_axes(path, g)), grads)
    # A pytree with grads' structure whose leaves are int | None (None at a leaf position is kept as a leaf).
    try:
        return jax.tree.map(centralise_gradient, grads, gc_axes)
    except ValueError as e:
        raise ValueError(f"gc_axes must match the parameter tree: {' '.join(str(e).split())}") from None


def _radam_scalars(t: jax.Array, b1: float, b2: float, n_sma_threshold: float):
    """Per-step scalars for step ``t`` (float32, >= 1): ``(rectified?, step size)`` as pSp computes them.

    pSp computes these in Python float64. In float32 the textbook ``N_max - 2t*b2^t/(1-b2^t)`` loses digits to
    cancellation exactly where it matters (``N_t`` about 6 at t = 6, from two terms near 2000: relative error ~3e-5).
    For ``x = t*ln(1/b2) < 0.5`` we use the cancellation-free expansion ``N_t = t - a(t^2-1)/6 + a^3(t^4-1)/360 -
    a^5(t^6-1)/15120 + a^7(t^8-1)/604800`` (``a = ln(1/b2)``, from the Bernoulli series of ``x/(e^x-1)``; the next
    term is < 1e-7 relative at x = 0.5); beyond that the direct formula is accurate (``N_t`` is no longer small).
    """
    a = -math.log(b2)  # float64 constants, folded in before the cast to float32
    n_max = 2.0 / (1.0 - b2) - 1.0
    x = t * a
    bias2 = -jnp.expm1(-x)  # 1 - b2^t
    bias1 = -jnp.expm1(t * math.log(b1))  # 1 - b1^t
    direct = n_max - 2.0 * t * jnp.exp(-x) / bias2
    ts = jnp.minimum(t, 0.5 / a)  # keeps the unused series branch finite for large t
    series = (
        ts
        - a * (ts**2 - 1) / 6.0
        + a**3 * (ts**4 - 1) / 360.0
        - a**5 * (ts**6 - 1) / 15120.0
        + a**7 * (ts**8 - 1) / 604800.0
    )
    n_sma = jnp.where(x < 0.5, series, direct)
    rectified = n_sma > n_sma_threshold
    # Clamped so the unused branch stays finite when N_t < 4 (values are identical where the branch is taken).
    n_safe = jnp.maximum(n_sma, 4.0 + 1e-3)
    rect = jnp.sqrt(
        bias2 * (n_safe - 4.0) / (n_max - 4.0) * (n_safe - 2.0) / n_safe * n_max / (n_max - 2.0)
    )
    step_size = jnp.where(rectified, rect, 1.0) / bias1
    return rectified, step_size


def ranger(
    learning_rate: float | optax.Schedule,
    betas: tuple[float, float] = (0.95, 0.999),
    eps: float = 1e-5,
    alpha: float = 0.5,
    k: int = 6,
    n_sma_threshold: float = 5,
    weight_decay: float = 0.0,
    use_gc: bool = True,
    gc_axes: GcAxes = None,
) -> optax.GradientTransformation:
    """pSp's Ranger as an optax transformation (defaults are pSp's; SPEC.md 1a).

    Args:
      learning_rate: a float or an optax schedule (called with the number of steps taken so far).
      gc_axes: the axis gradient centralisation keeps, per leaf. ``None`` (default): the last axis of every leaf
        with ndim > 1 (Flax conv HWIO and Dense (in, out) kernels). An int: that axis on every leaf with
        ndim > 1, e.g. ``ranger(1.0, gc_axes=0)`` for W+ codes ``(K, S, D)``. A pytree like params of
        ``int | None`` (None: no centralisation for that leaf), or a callable ``(path, leaf) -> int | None``.
        Leaves with ndim <= 1 are never centralised.

    ``update(grads, state, params)`` requires ``params`` (Lookahead); every ``k``-th update moves the parameters
    to the new slow weights. Apply the result with ``optax.apply_updates``.
    """
    b1, b2 = (float(b) for b in betas)
    if not (0.0 <= b1 < 1.0 and 0.0 < b2 < 1.0):
        raise ValueError(f"ranger: betas must lie in [0, 1) and (0, 1), got {betas}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"ranger: alpha must lie in [0, 1], got {alpha}")
    if int(k) < 1:
        raise ValueError(f"ranger: k must be >= 1, got {k}")
    k = int(k)

    def init_fn(params: optax.Params) -> RangerState:
        zeros = lambda p: jnp.zeros_like(p)  # noqa: E731
        return RangerState(
            count=jnp.zeros((), jnp.int32),
            mu=jax.tree.map(zeros, params),
            nu=jax.tree.map(zeros, params),
            slow=jax.tree.map(jnp.copy, params),  # a copy: callers donate params and state together
        )

    def update_fn(grads: optax.Updates, state: RangerState, params: optax.Params | None = None):
        if params is None:
            raise ValueError("ranger: update() needs params (Lookahead keeps a slow copy of the weights)")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        count = optax.safe_int32_increment(state.count)
        if use_gc:
            grads = _centralise_tree(grads, gc_axes)
        # Same operation order as the PyTorch in-place ops; (1-b) folded in float64 like torch's scalar arguments.
        nu = jax.tree.map(lambda v, g: v * b2 + (1.0 - b2) * (g * g), state.nu, grads)
        mu = jax.tree.map(lambda m, g: m * b1 + (1.0 - b1) * g, state.mu, grads)
        rectified, step_size = _radam_scalars(count.astype(jnp.float32), b1, b2, n_sma_threshold)
        scale = -step_size * lr
        sync = count % k == 0

        def leaf(p, m, v, slow):
            step = jnp.where(rectified, scale * (m / (jnp.sqrt(v) + eps)), scale * m)
            if weight_decay:
                step = step - (weight_decay * lr) * p
            fast = p + step
            new_slow = slow + alpha * (fast - slow)
            # At a sync step the parameters jump to the new slow weights; expressed as an update.
            return jnp.where(sync, new_slow - p, step).astype(p.dtype), jnp.where(sync, new_slow, slow)

        p_leaves, treedef = jax.tree.flatten(params)
        pairs = [leaf(*xs) for xs in zip(p_leaves, *(treedef.flatten_up_to(t) for t in (mu, nu, state.slow)))]
        updates = treedef.unflatten([u for u, _ in pairs])
        slow = treedef.unflatten([s for _, s in pairs])
        return updates, RangerState(count=count, mu=mu, nu=nu, slow=slow)

    return optax.GradientTransformation(init_fn, update_fn)
