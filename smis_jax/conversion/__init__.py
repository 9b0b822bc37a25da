"""Checkpoint conversion: PyTorch state dicts to Flax trees (one table per network) and the on-disk format."""

from smis_jax.conversion.common import (
    ConversionError,
    StateDict,
    check_tree,
    load_converted,
    save_converted,
)

__all__ = ["ConversionError", "StateDict", "check_tree", "load_converted", "save_converted"]
