"""A run's export (smis_jax.export): shots that were not inverted (``--inversion-steps 0``) have no loss curve."""

import types

import jax
import numpy as np

from smis_jax import export
from smis_jax.io import load_generator
from smis_jax.labeling import DensePrototypes
from smis_jax.nets import psp


def test_export_without_an_inversion_curve_round_trips(golden, tmp_path):
    g = load_generator(golden / "stylegan2_tiny128.pt")
    enc = psp.EncoderConfig.golden(input_nc=19, style_num=g.config.n_latent)
    state = types.SimpleNamespace(**jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), psp.abstract_variables(enc)))
    shape = (1, g.config.n_latent, g.config.style_dim)
    shots = export.ShotCodes(("a",), np.ones(shape, np.float32), np.zeros(1, np.float32), np.zeros((0, 1), np.float32))
    protos = DensePrototypes(np.ones((19, 4), np.float32), np.ones(19, bool))
    export.write(tmp_path / "e", enc, state, g, np.zeros(shape[1:], np.float32), {},
                 run={"train": {}, "domain": "golden-faces", "step": 0}, prototypes=protos, shots=shots)
    loaded = export.load(tmp_path / "e")
    assert loaded.shots.history is None and loaded.shots.names == ("a",)
    np.testing.assert_array_equal(loaded.shots.w_plus, shots.w_plus)
    assert loaded.prototypes.kind == "paper"  # prototypes alone: the paper's labeller
    np.testing.assert_array_equal(loaded.prototypes.protos.vectors, protos.vectors)


def test_export_of_a_64_input_encoder_reads_256_masks(golden, tmp_path):
    """An encoder of 64x64 input is exported with its input size; synthesis reads masks at 256 as always and the
    encoder gets each 4x4 block's class: the codes equal those of the 64x64 mask itself."""
    from smis_jax import synthesize

    g = load_generator(golden / "stylegan2_tiny128.pt")
    enc = psp.EncoderConfig(input_nc=19, style_num=g.config.n_latent, widths=(8, 16, 16, 32), units=(1, 1, 1, 1),
                            style_dim=g.config.style_dim, se_reduction=8, input_size=64)
    variables = psp.init_variables(enc, jax.random.key(0))
    state = types.SimpleNamespace(params=variables["params"], batch_stats=variables["batch_stats"])
    shape = (g.config.n_latent, g.config.style_dim)
    export.write(tmp_path / "e", enc, state, g, np.zeros(shape, np.float32), {"dataset_type": "golden-faces"},
                 run={"train": {}, "domain": "golden-faces", "step": 0},
                 prototypes=DensePrototypes(np.ones((19, 4), np.float32), np.ones(19, bool)))
    pipeline = export.load(tmp_path / "e").pipeline
    assert pipeline.encoder.config == enc and pipeline.encoder.config.input_size == 64
    small = np.random.default_rng(0).integers(0, 19, (2, 64, 64))
    big = np.repeat(np.repeat(small, 4, 1), 4, 2)
    codes = synthesize.encode(pipeline, jax.nn.one_hot(big, 19))
    direct = psp.GradualStyleEncoder(enc).apply(variables, jax.nn.one_hot(small, 19), False)
    np.testing.assert_allclose(codes, direct, rtol=1e-5, atol=1e-5)
