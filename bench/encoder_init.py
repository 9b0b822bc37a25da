"""First-call time (compile + run) of the encoder's random init: Flax's own ``init`` under jit (one threefry per
parameter) against ``smis_jax.nets.psp.init_variables`` (two draws), side by side in one process.

    python bench/encoder_init.py
"""

import platform
import time

import jax
import jax.numpy as jnp

from smis_jax.nets import psp

CONFIGS = {
    "tiny (shapes, 7 classes)": psp.EncoderConfig(input_nc=7, style_num=10, widths=(8, 16, 16, 32), units=(1, 1, 1, 1),
                                                  style_dim=64, se_reduction=8),
    "IR-SE50 (faces, 19 classes)": psp.EncoderConfig.ir_se50(19, 18),
}


def first_call(fn, *args) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def main() -> None:
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {platform.processor() or platform.machine()}")
    for name, cfg in CONFIGS.items():
        x = jnp.zeros((1, psp.INPUT_SIZE, psp.INPUT_SIZE, cfg.input_nc))
        flax_init = jax.jit(lambda key, cfg=cfg, x=x: psp.GradualStyleEncoder(cfg).init(key, x, False))
        a = first_call(flax_init, jax.random.key(0))
        b = first_call(psp.init_variables, cfg, jax.random.key(0))
        print(f"{name}: Flax init under jit {a:.1f} s, init_variables {b:.1f} s")


if __name__ == "__main__":
    main()
