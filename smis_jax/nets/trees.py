"""Pytree shape checks shared by the networks (loaded weights) and the file readers."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from smis_jax.errors import ConversionError

__all__ = ["check_tree", "flatten"]


def flatten(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in leaves}


def check_tree(expected: Any, actual: Any, what: str) -> None:
    """Fail unless ``actual`` has exactly the leaves and shapes of ``expected`` (e.g. an ``eval_shape`` tree)."""
    exp, act = flatten(expected), flatten(actual)
    for key, leaf in exp.items():
        if key not in act:
            raise ConversionError(f"{what}: missing '{key}' (expected shape {tuple(leaf.shape)})")
        if tuple(np.shape(act[key])) != tuple(leaf.shape):
            raise ConversionError(
                f"{what}: '{key}' has shape {tuple(np.shape(act[key]))}, expected {tuple(leaf.shape)}"
            )
    extra = [k for k in act if k not in exp]
    if extra:
        raise ConversionError(f"{what}: unexpected '{extra[0]}' with shape {tuple(np.shape(act[extra[0]]))}")
