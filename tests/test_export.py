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
