"""Writers of NVIDIA-format network pickles for tests, without NVIDIA's code.

Writer objects pickle under NVIDIA's global names (``torch_utils.persistence._reconstruct_persistent_obj``,
``dnnlib.tflib.network.Network``), registered as stand-in modules only while a pickle is written; tensors are
real torch tensors, so they pickle exactly as in a stylegan2-ada-pytorch snapshot. :func:`rewrite` re-emits a
golden pickle (read with ``smis_jax.io.nvidiafile``) with a change, for the refusal and side-effect tests;
:func:`ada_generator` builds a ``G_ema`` of any size (random weights) for the memory test.
"""

from __future__ import annotations

import collections
import contextlib
import math
import pickle
import sys
import types

import numpy as np

from smis_jax.io import nvidiafile
from smis_jax.io.nvidiafile import PersistentObject, TFNetwork

SIDE_EFFECT_SRC = "import os\nos.system('touch {marker}')\nopen({marker!r}, 'w').write('pickled code ran')\n"


def _reconstruct_persistent_obj(meta):  # never called: only its name goes into the pickle
    raise AssertionError("a writer stand-in")


class Network:
    """Pickles as TF StyleGAN2's ``dnnlib.tflib.network.Network``: class + BUILD with its state dict."""

    def __init__(self, state):
        self.state = state

    def __getstate__(self):
        return self.state


class EasyDict(dict):
    """Pickles as ``dnnlib.util.EasyDict``."""


class Persistent:
    """Pickles as stylegan2-ada-pytorch's ``persistence`` does: ``_reconstruct_persistent_obj(meta)``."""

    def __init__(self, class_name, state, module_src="# networks.py\n"):
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name, state=self.state)
        return _reconstruct_persistent_obj, (meta,)


@contextlib.contextmanager
def _nvidia_names():
    names = ["torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util", "dnnlib.tflib", "dnnlib.tflib.network"]
    added = [n for n in names if n not in sys.modules]
    for n in added:
        sys.modules[n] = types.ModuleType(n)
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    EasyDict.__module__ = "dnnlib.util"
    sys.modules["dnnlib.util"].EasyDict = EasyDict
    Network.__module__ = "dnnlib.tflib.network"
    sys.modules["dnnlib.tflib.network"].Network = Network
    try:
        yield
    finally:
        for n in added:
            del sys.modules[n]


def dump(obj, path, protocol=4):
    with _nvidia_names(), open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def _tensor(a):
    import torch

    return torch.from_numpy(np.array(a, order="C"))  # (ascontiguousarray would make 0-d arrays 1-d)


def to_writer(obj, module_src=None):
    """A tree read by ``nvidiafile`` (PersistentObject / TFNetwork / arrays) -> writer objects that pickle back."""
    import torch

    if isinstance(obj, PersistentObject):
        state = dict(obj.state)
        params = state.get("_parameters") or {}
        state["_parameters"] = collections.OrderedDict(
            (k, torch.nn.Parameter(_tensor(v), requires_grad=False)) for k, v in params.items())
        state["_buffers"] = collections.OrderedDict((k, _tensor(v)) for k, v in (state.get("_buffers") or {}).items())
        state["_modules"] = collections.OrderedDict(
            (k, to_writer(v, module_src)) for k, v in (state.get("_modules") or {}).items())
        return Persistent(obj.class_name, state, module_src or "# networks.py\n")
    if isinstance(obj, TFNetwork):
        state = dict(obj.state)
        state["components"] = {k: to_writer(v, module_src) for k, v in obj.components.items()}
        return Network(state)
    if isinstance(obj, nvidiafile.EasyDict):
        return EasyDict({k: to_writer(v, module_src) for k, v in obj.items()})
    if isinstance(obj, dict):
        return {k: to_writer(v, module_src) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_writer(v, module_src) for v in obj)
    return obj


def module(root: PersistentObject, path: str) -> PersistentObject:
    for name in path.split(".") if path else []:
        root = root.state["_modules"][name]
    return root


def rewrite(src, dst, change=None, module_src=None, protocol=4):
    """Read ``src`` with nvidiafile, let ``change(data)`` edit it in place, write it back to ``dst``."""
    data = nvidiafile.load(src)
    if change is not None:
        change(data)
    return dump(to_writer(data, module_src), dst, protocol)


# ---------------------------------------------------------------------------------------------------------------
# A G_ema of any size, as stylegan2-ada-pytorch's networks.Generator lays it out (random weights).

def ada_generator(size, w_dim=512, n_mlp=8, channel_base=32768, channel_max=512, conv_clamp=256, seed=0):
    """Returns a ``PersistentObject`` tree (numpy leaves) of a skip Generator; write it with to_writer + dump."""
    rng = np.random.default_rng(seed)
    f32 = np.float32

    def randn(*shape):
        return rng.standard_normal(shape, dtype=f32)

    def node(class_name, params=(), buffers=(), modules=(), **attrs):
        state = {"training": False, "_parameters": dict(params), "_buffers": dict(buffers),
                 "_non_persistent_buffers_set": set(), "_modules": dict(modules), **attrs}
        return PersistentObject(class_name, state)

    def fc(cin, cout, activation, lr, bias_init=0.0):
        return node("FullyConnectedLayer", [("weight", randn(cout, cin) / lr), ("bias", bias_init + randn(cout))],
                    activation=activation, weight_gain=lr / math.sqrt(cin), bias_gain=lr)

    fir = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(f32) / 64
    ch = {r: min(channel_base // r, channel_max) for r in [2**i for i in range(2, int(math.log2(size)) + 1)]}

    def layer(cin, cout, res, up):
        return node("SynthesisLayer",
                    [("weight", randn(cout, cin, 3, 3)), ("noise_strength", randn()), ("bias", randn(cout))],
                    [("resample_filter", fir), ("noise_const", randn(res, res))],
                    [("affine", fc(w_dim, cin, "linear", 1, 1.0))],
                    resolution=res, up=2 if up else 1, use_noise=True, activation="lrelu", conv_clamp=conv_clamp)

    def torgb(cin):
        return node("ToRGBLayer", [("weight", randn(3, cin, 1, 1)), ("bias", randn(3))], [],
                    [("affine", fc(w_dim, cin, "linear", 1, 1.0))], conv_clamp=conv_clamp)

    blocks = {}
    for res, c in ch.items():
        mods = ([("conv1", layer(c, c, 4, False))] if res == 4 else
                [("conv0", layer(ch[res // 2], c, res, True)), ("conv1", layer(c, c, res, False))])
        params = [("const", randn(c, 4, 4))] if res == 4 else []
        blocks[f"b{res}"] = node("SynthesisBlock", params, [("resample_filter", fir)], mods + [("torgb", torgb(c))],
                                 resolution=res, architecture="skip", is_last=res == size)
    num_ws = 2 * int(math.log2(size)) - 2
    mapping = node("MappingNetwork", [], [("w_avg", randn(w_dim))],
                   [(f"fc{i}", fc(w_dim, w_dim, "lrelu", 0.01)) for i in range(n_mlp)],
                   z_dim=w_dim, c_dim=0, w_dim=w_dim, num_ws=num_ws, num_layers=n_mlp)
    synthesis = node("SynthesisNetwork", [], [], list(blocks.items()), w_dim=w_dim, img_resolution=size,
                     img_channels=3, num_ws=num_ws)
    return node("Generator", [], [], [("synthesis", synthesis), ("mapping", mapping)], z_dim=w_dim, c_dim=0,
                w_dim=w_dim, img_resolution=size, img_channels=3, num_ws=num_ws)
