"""Make the NVIDIA-format golden files with NVIDIA's own code (stylegan2-ada-pytorch) as the oracle.

    git --git-dir=<mirror of NVlabs/stylegan2-ada-pytorch> archive HEAD | tar -x -C /tmp/ada
    python tests/golden_nvidia/make_goldens.py --ada /tmp/ada --out tests/golden_nvidia

Runs on CPU (ADA's custom ops fall back to their reference implementations there). Needs torch and what ADA
imports (click, scipy, requests, pillow); install those into a scratch venv, never into this project. NVIDIA's
code is imported from ``--ada`` at run time and never copied here. Writes, for each case, a network pickle in
NVIDIA's format (what smis-jax reads), ``<case>.npz`` (the oracle's outputs, NHWC) and ``<case>.json`` (how
they were made). All weights are random, at small non-standard widths, with every parameter and buffer
randomised (noise strengths, biases, w_avg, ...) so that no term can cancel unnoticed.

- ``ada_tiny64``: a stylegan2-ada-pytorch training snapshot ``dict(G, D, G_ema, augment_pipe,
  training_set_kwargs)`` written by ADA's own ``torch_utils.persistence`` (module source embedded), 64 px,
  3 mapping layers, z_dim = w_dim = 32, channels {4: 32, 8: 32, 16: 32, 32: 16, 64: 8}, ``conv_clamp`` 0.8
  (small enough that it really clips; the json records by how much the images change without it) and
  ``num_fp16_res`` 2 (the oracle runs ``force_fp32=True``). ``G`` holds other weights than ``G_ema``.
- ``tf_tiny64``: an original TensorFlow StyleGAN2 pickle ``(G, D, Gs)`` of ``dnnlib.tflib.network.Network``
  objects (written through a stub class at that path, holding TF-layout variables), 64 px, 2 mapping layers,
  z_dim = w_dim = 40, channels {4: 32, 8: 32, 16: 32, 32: 16, 64: 8}; the oracle is ADA's ``legacy.py`` (its
  unpickler and ``convert_tf_generator`` on ``Gs``). Its ``build_module_src`` raises SystemExit if ever run.

Arrays in ``<case>.npz`` (B = 2): ``z`` (B, D); ``w`` = mapping(z) (B, D); ``w_trunc`` = mapping(z,
truncation_psi=0.7) (B, D); ``w_plus`` (B, L, D) random per-layer codes; ``img_const`` / ``img_none``:
synthesis of w broadcast to all layers with ``noise_mode='const'`` / ``'none'``; ``img_wplus_const``: of
``w_plus`` with const noise; ``features_const``: the output of ``synthesis.b64.conv1`` (the 64x64 feature
layer) in the ``img_const`` run. Images (B, 64, 64, 3), features (B, 64, 64, C64), all float32.
"""

from __future__ import annotations

import argparse
import copy
import json
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

BATCH = 2
PSI = 0.7


def _randomise(module, rng, lr_mapping):
    """Every parameter and buffer but the FIR filters gets random values of a plausible scale."""
    import torch

    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("resample_filter"):
                continue
            r = torch.from_numpy(rng.standard_normal(t.shape).astype(np.float32))
            if name.startswith("mapping.fc") and name.endswith("weight"):
                r = r / lr_mapping
            elif name.startswith("mapping.fc") and name.endswith("bias"):
                r = r * 0.1 / lr_mapping
            elif name.endswith("affine.bias"):
                r = 1 + 0.3 * r
            elif name.endswith("noise_strength"):
                r = 0.5 * r
            elif name.endswith(".bias") or name.endswith("w_avg"):
                r = 0.3 * r
            t.copy_(r)


def _run(G, z, w_plus):
    """The oracle's outputs for one generator (float32, NHWC)."""
    import torch

    feats = {}
    hook = G.synthesis.b64.conv1.register_forward_hook(lambda m, i, o: feats.setdefault("f", o))
    with torch.no_grad():
        zt = torch.from_numpy(z)
        ws = G.mapping(zt, None)
        ws_trunc = G.mapping(zt, None, truncation_psi=PSI)
        img_const = G.synthesis(ws, noise_mode="const", force_fp32=True)
        features = feats["f"]
        hook.remove()
        img_none = G.synthesis(ws, noise_mode="none", force_fp32=True)
        img_wplus = G.synthesis(torch.from_numpy(w_plus), noise_mode="const", force_fp32=True)

    def nhwc(t):
        return np.ascontiguousarray(t.permute(0, 2, 3, 1).numpy().astype(np.float32))

    return {"z": z, "w": ws[:, 0].numpy(), "w_trunc": ws_trunc[:, 0].numpy(), "w_plus": w_plus,
            "img_const": nhwc(img_const), "img_none": nhwc(img_none), "img_wplus_const": nhwc(img_wplus),
            "features_const": nhwc(features)}


def _inputs(rng, G):
    z = rng.standard_normal((BATCH, G.z_dim)).astype(np.float32)
    w_plus = rng.standard_normal((BATCH, G.num_ws, G.w_dim)).astype(np.float32)
    return z, w_plus


def make_ada(out: Path, rng) -> dict:
    import dnnlib
    from training import augment, networks

    g_kwargs = dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=64, img_channels=3,
                    mapping_kwargs=dict(num_layers=3),
                    synthesis_kwargs=dict(channel_base=512, channel_max=32, num_fp16_res=2, conv_clamp=0.8))
    G = networks.Generator(**g_kwargs).eval().requires_grad_(False)
    _randomise(G, rng, 0.01)
    G_ema = copy.deepcopy(G)
    _randomise(G_ema, rng, 0.01)
    D = networks.Discriminator(c_dim=0, img_resolution=64, img_channels=3, channel_base=256, channel_max=16,
                               num_fp16_res=2, conv_clamp=0.8).eval().requires_grad_(False)
    augment_pipe = augment.AugmentPipe(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                                       brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
    snapshot = dict(training_set_kwargs=dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset",
                                                        path="~/datasets/tiny.zip", use_labels=False,
                                                        max_size=None, xflip=False, resolution=64))
    for name, module in [("G", G), ("D", D), ("G_ema", G_ema), ("augment_pipe", augment_pipe)]:
        snapshot[name] = module
    with open(out / "ada_tiny64.pkl", "wb") as f:
        pickle.dump(snapshot, f)  # as training_loop.py writes network-snapshot-*.pkl

    z, w_plus = _inputs(rng, G_ema)
    arrays = _run(G_ema, z, w_plus)
    # The same weights without conv_clamp: how much the clamp changes the oracle's image (must be > 0).
    unclamped = networks.Generator(**{**g_kwargs, "synthesis_kwargs": {**g_kwargs["synthesis_kwargs"],
                                                                       "conv_clamp": None}}).eval()
    unclamped.load_state_dict(G_ema.state_dict())
    free = _run(unclamped, z, w_plus)
    return {"arrays": arrays, "meta": {
        "generator_kwargs": g_kwargs, "truncation_psi": PSI,
        "max_abs_change_without_conv_clamp": float(np.abs(free["img_const"] - arrays["img_const"]).max()),
        "features_fraction_at_clamp": float(np.mean(np.abs(arrays["features_const"]) >= 0.8 - 1e-6)),
    }}


class _TFNetwork:
    """Writes the state of a ``dnnlib.tflib.network.Network`` (what TF StyleGAN2's ``__getstate__`` returns)."""

    def __init__(self, name, build_func_name, static_kwargs, variables, components=None):
        self.state = {"version": 4, "name": name, "static_kwargs": dict(static_kwargs),
                      "components": dict(components or {}),
                      "build_module_src": "raise SystemExit('ran pickled code')\n",
                      "build_func_name": build_func_name, "variables": list(variables)}

    def __getstate__(self):
        return self.state


def _register_tf_stub():
    for name in ("dnnlib.tflib", "dnnlib.tflib.network"):
        sys.modules.setdefault(name, types.ModuleType(name))
    _TFNetwork.__module__ = "dnnlib.tflib.network"
    _TFNetwork.__qualname__ = _TFNetwork.__name__ = "Network"
    sys.modules["dnnlib.tflib.network"].Network = _TFNetwork


def make_tf(out: Path, rng) -> dict:
    import legacy

    res, z_dim, n_map, fmap_base, fmap_max = 64, 40, 2, 256, 32
    channels = {r: min(fmap_base * 2 // r, fmap_max) for r in (4, 8, 16, 32, 64)}
    f32 = np.float32

    def randn(*shape, scale=1.0, offset=0.0):
        return (offset + scale * rng.standard_normal(shape)).astype(f32)

    def gs_variables():
        mapping = []
        for i in range(n_map):
            mapping += [(f"Dense{i}/weight", randn(z_dim, z_dim, scale=100)),
                        (f"Dense{i}/bias", randn(z_dim, scale=10))]
        synth, noises = [], []

        def layer(prefix, cin, cout, k, noise=True):
            v = [(f"{prefix}/weight", randn(k, k, cin, cout)), (f"{prefix}/mod_weight", randn(z_dim, cin)),
                 (f"{prefix}/mod_bias", randn(cin, scale=0.3))]
            if noise:
                v.append((f"{prefix}/noise_strength", f32(0.5 * rng.standard_normal())))  # a numpy scalar, as TF gives
                v.append((f"{prefix}/bias", randn(cout, scale=0.3)))
            else:
                v.append((f"{prefix}/bias", randn(cout, scale=0.3)))
            return v

        synth.append(("4x4/Const/const", randn(1, channels[4], 4, 4)))
        synth += layer("4x4/Conv", channels[4], channels[4], 3)
        synth += layer("4x4/ToRGB", channels[4], 3, 1, noise=False)
        noises.append(("noise0", randn(1, 1, 4, 4)))
        for r in (8, 16, 32, 64):
            synth += layer(f"{r}x{r}/Conv0_up", channels[r // 2], channels[r], 3)
            synth += layer(f"{r}x{r}/Conv1", channels[r], channels[r], 3)
            synth += layer(f"{r}x{r}/ToRGB", channels[r], 3, 1, noise=False)
            n = len(noises)
            noises += [(f"noise{n}", randn(1, 1, r, r)), (f"noise{n + 1}", randn(1, 1, r, r))]
        synth += [("lod", f32(0.0))]
        return mapping, noises + synth

    static = dict(num_channels=3, resolution=res, label_size=0, latent_size=z_dim, dlatent_size=z_dim,
                  mapping_layers=n_map, fmap_base=fmap_base, fmap_max=fmap_max)

    def g_network(name):
        mapping, synth = gs_variables()
        comps = {"mapping": _TFNetwork("G_mapping", "G_mapping", static, mapping),
                 "synthesis": _TFNetwork("G_synthesis", "G_synthesis_stylegan2", static, synth)}
        return _TFNetwork(name, "G_main", static, [("dlatent_avg", randn(z_dim, scale=0.3))], comps)

    G, Gs = g_network("G"), g_network("Gs")
    D = _TFNetwork("D", "D_stylegan2", dict(num_channels=3, resolution=res, label_size=0),
                   [("64x64/FromRGB/weight", randn(1, 1, 3, 8)), ("64x64/FromRGB/bias", randn(8)),
                    ("Output/weight", randn(8, 1)), ("Output/bias", randn(1))])
    _register_tf_stub()
    with open(out / "tf_tiny64.pkl", "wb") as f:
        pickle.dump((G, D, Gs), f, protocol=3)  # TF StyleGAN2 ran on Python 3.6: protocol 3

    # The oracle: legacy.py's own unpickler and conversion of Gs (G and D are not what we read).
    with open(out / "tf_tiny64.pkl", "rb") as f:
        tf_G, tf_D, tf_Gs = legacy._LegacyUnpickler(f).load()
    G_ema = legacy.convert_tf_generator(tf_Gs)
    z, w_plus = _inputs(rng, G_ema)
    return {"arrays": _run(G_ema, z, w_plus), "meta": {"static_kwargs": static, "channels": channels,
                                                       "truncation_psi": PSI}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ada", required=True, help="a checkout of NVlabs/stylegan2-ada-pytorch")
    ap.add_argument("--out", required=True, help="folder for the golden files")
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(args.ada).absolute()))
    import torch

    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(["git", "-C", args.ada, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        commit = "unknown (not a git checkout)"
    rng = np.random.default_rng(args.seed)
    for case, make in [("ada_tiny64", make_ada), ("tf_tiny64", make_tf)]:
        result = make(out, rng)
        np.savez(out / f"{case}.npz", **result["arrays"])
        meta = {"case": case, "oracle": "NVlabs/stylegan2-ada-pytorch", "oracle_commit": commit,
                "torch": torch.__version__, "device": "cpu", "seed": args.seed, "batch": BATCH,
                "made_by": "tests/golden_nvidia/make_goldens.py", "layout": "NHWC",
                "shapes": {k: list(v.shape) for k, v in result["arrays"].items()}, **result["meta"]}
        (out / f"{case}.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(case, json.dumps(result["meta"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
