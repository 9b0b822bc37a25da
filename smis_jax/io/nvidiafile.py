"""Read NVIDIA's StyleGAN2 network pickles as plain data, without torch and without running pickled code.

Two formats, told apart by what the pickle holds, not by the file name:

- **stylegan2-ada-pytorch** (and the stylegan3 repo): ``pickle.dump(dict(G, D, G_ema, augment_pipe,
  training_set_kwargs))``. Every network object was reduced by ``torch_utils.persistence`` to
  ``_reconstruct_persistent_obj(meta)`` with ``meta = dict(type='class', version, module_src, class_name,
  state)``: loading it with NVIDIA's code would ``exec(module_src)``. Here it becomes a :class:`PersistentObject`
  (class name + the module's ``__dict__``) and ``module_src`` is never run. Tensors inside are
  ``torch._utils._rebuild_tensor_v2`` over ``torch.storage._load_from_bytes`` (a legacy ``torch.save`` stream),
  read by ``torchfile``.
- **TensorFlow StyleGAN2** (``stylegan2-*-config-f.pkl``): a tuple ``(G, D, Gs)`` of
  ``dnnlib.tflib.network.Network`` objects whose state holds ``static_kwargs``, ``components`` (sub-networks),
  ``variables`` ``[(name, numpy array)]`` and ``build_module_src`` (never run). They become :class:`TFNetwork`,
  as ADA's ``legacy.py`` reads them with a stub class.

Exactly the globals these formats need are mapped to data (``ALLOWED``); any other global is refused with a
one-line :class:`NvidiaPickleError` naming it.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from smis_jax.errors import UserError
from smis_jax.io import torchfile
from smis_jax.io.safepickle import NUMPY_ARRAYS, NUMPY_SCALARS, RestrictedUnpickler

__all__ = ["NvidiaPickleError", "PersistentObject", "TFNetwork", "EasyDict", "ALLOWED", "load", "is_pickle"]


class NvidiaPickleError(UserError, ValueError):
    """The file is not an NVIDIA network pickle this reader accepts; the message says why in one line."""


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access; data only)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class PersistentObject:
    """What ``torch_utils.persistence._reconstruct_persistent_obj`` would rebuild, kept as data.

    ``class_name``: e.g. ``'Generator'``; ``state``: the object's ``__dict__`` (for a ``torch.nn.Module``:
    its attributes plus ``_parameters``, ``_buffers``, ``_modules``). The embedded module source is dropped.
    """

    def __init__(self, class_name: str, state: dict):
        self.class_name = class_name
        self.state = state

    def __repr__(self):
        return f"PersistentObject({self.class_name})"

    def get(self, name: str, default: Any = None) -> Any:
        """A plain attribute (``conv_clamp``, ``architecture``, ...)."""
        return self.state.get(name, default)

    @property
    def modules(self) -> dict[str, Any]:
        return dict(self.state.get("_modules") or {})

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "PersistentObject"]]:
        yield prefix.rstrip("."), self
        for name, child in self.modules.items():
            if isinstance(child, PersistentObject):
                yield from child.named_modules(f"{prefix}{name}.")

    def state_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        """``torch.nn.Module.state_dict()``: parameters and persistent buffers of this module and its children."""
        out: dict[str, np.ndarray] = {}
        skip = set(self.state.get("_non_persistent_buffers_set") or ())
        for name, value in (self.state.get("_parameters") or {}).items():
            if value is not None:
                out[prefix + name] = value
        for name, value in (self.state.get("_buffers") or {}).items():
            if value is not None and name not in skip:
                out[prefix + name] = value
        for name, child in self.modules.items():
            if isinstance(child, PersistentObject):
                out.update(child.state_dict(f"{prefix}{name}."))
            elif child is not None:
                raise NvidiaPickleError(
                    f"module '{prefix}{name}' is a {type(child).__name__}, expected a network object")
        return out


def _reconstruct_persistent_obj(meta):
    """Replaces ``torch_utils.persistence._reconstruct_persistent_obj``: keeps the state, never runs the source."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        got = ({k: v for k, v in meta.items() if k not in ("module_src", "state")} if isinstance(meta, dict)
               else type(meta).__name__)
        raise NvidiaPickleError(f"unsupported persistent object (expected type 'class' with a class_name), got {got}")
    state = meta.get("state")
    if not isinstance(state, dict):
        raise NvidiaPickleError(f"persistent object {meta['class_name']} has no state dict")
    return PersistentObject(meta["class_name"], dict(state))


class TFNetwork:
    """Stand-in for ``dnnlib.tflib.network.Network`` (TensorFlow StyleGAN2): its pickled state as data."""

    def __init__(self):
        self.state: dict = {}

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise NvidiaPickleError(f"TensorFlow network state is a {type(state).__name__}, expected a dict")
        self.state = state

    def __repr__(self):
        return f"TFNetwork({self.name})"

    @property
    def name(self) -> str:
        return str(self.state.get("name", "?"))

    @property
    def version(self) -> int:
        return int(self.state.get("version", 0))

    @property
    def build_func_name(self) -> str | None:
        return self.state.get("build_func_name")

    @property
    def static_kwargs(self) -> dict:
        return dict(self.state.get("static_kwargs") or {})

    @property
    def components(self) -> dict[str, "TFNetwork"]:
        return dict(self.state.get("components") or {})

    def variables(self, prefix: str = "") -> dict[str, np.ndarray]:
        """All variables of this network and its components, keyed ``component/.../name`` (as ADA's
        ``legacy._collect_tf_params``); numpy scalars become 0-d arrays."""
        out = {prefix + name: np.asarray(value) for name, value in self.state.get("variables") or []}
        for name, comp in self.components.items():
            if not isinstance(comp, TFNetwork):
                raise NvidiaPickleError(f"TensorFlow component '{prefix}{name}' is a {type(comp).__name__}")
            out.update(comp.variables(f"{prefix}{name}/"))
        return out


def _load_from_bytes(data):
    return torchfile.load_bytes(data, "tensor storage")


ALLOWED: dict[tuple[str, str], Any] = {
    **NUMPY_ARRAYS,
    **NUMPY_SCALARS,
    **torchfile.TENSOR_GLOBALS,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib.tflib.network", "Network"): TFNetwork,
}
_REFUSAL = ("an NVIDIA network pickle holds only network objects, tensors, numpy arrays and dicts; "
            "this file would run code")


def is_pickle(path: str | os.PathLike) -> bool:
    """A plain pickle stream (protocol >= 2) that is not a legacy ``torch.save`` file (which starts with a pickle
    of its magic number)."""
    with open(path, "rb") as f:
        head = f.read(32)
    if len(head) < 2 or head[0] != 0x80:
        return False
    legacy_torch = head[2:3] == b"\x8a" and int.from_bytes(head[4:4 + head[3]], "little") == torchfile._LEGACY_MAGIC
    return not legacy_torch


def load(path: str | os.PathLike) -> Any:
    """The pickle's content: ADA dicts of :class:`PersistentObject`, or a tuple of :class:`TFNetwork`.

    Raises :class:`NvidiaPickleError` (one line, naming the file) for a refused global or an unreadable file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise NvidiaPickleError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, ALLOWED, error=NvidiaPickleError, refusal=_REFUSAL).load()
    except (NvidiaPickleError, torchfile.TorchFileError) as e:
        raise NvidiaPickleError(f"{path}: {e}") from None
    except Exception as e:  # a corrupt or truncated file; pickle raises many types
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise NvidiaPickleError(f"{path}: not a readable network pickle ({reason})") from None

