"""The precision policy: one setting, applied by the command-line tools to what they compile, recorded with runs.

XLA:CPU computes float32 matmuls in float32 whatever the setting, so what is checked is what the compiled programs
ask for (the precision in the lowered StableHLO), not the numbers.
"""

import re

import jax
import jax.numpy as jnp
import pytest

from smis_jax import precision
from smis_jax.config import ConfigError, TrainConfig
from smis_jax.errors import InvalidValueError
from smis_jax.experiment import _check_resume

LOWERED = {"highest": "HIGHEST", "tensorfloat32": "HIGH", "default": "DEFAULT"}


def _asked(fn, *args) -> set[str]:
    text = jax.jit(fn).lower(*args).as_text()  # dot_general: "precision = [X, X]"; convolution: "<precision X>"
    return set(re.findall(r"precision = \[(\w+), \w+\]", text)) | set(re.findall(r"<precision (\w+)>", text))


@pytest.mark.parametrize("value", precision.PRECISIONS)
def test_policy_reaches_matmuls_and_convolutions_and_is_restored(value):
    x = jnp.ones((1, 8, 8, 3))
    kernel = jnp.ones((3, 3, 3, 4))
    conv = lambda a, k: jax.lax.conv_general_dilated(a, k, (1, 1), "SAME",  # noqa: E731
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    before = jax.config.jax_default_matmul_precision  # the test suite's: highest
    with precision.policy(value) as applied:
        assert applied == value
        assert _asked(lambda a: a @ a, jnp.ones((4, 4))) == {LOWERED[value]}
        assert _asked(conv, x, kernel) == {LOWERED[value]}
    assert jax.config.jax_default_matmul_precision == before
    with precision.policy(None) as applied:  # no setting: the default, full float32
        assert applied == precision.DEFAULT == "highest"


def test_bad_values_are_one_line_errors():
    with pytest.raises(InvalidValueError, match="precision must be one of highest, tensorfloat32, default, got 'fp8'"):
        with precision.policy("fp8"):
            pass
    with pytest.raises(ConfigError, match="precision must be one of"):
        TrainConfig(domain="shapes", precision="float16")
    assert TrainConfig(domain="shapes").precision == "highest"


def test_train_run_flag():
    from train import run as train_cli

    args = train_cli.parse_args(["--domain", "shapes", "--workdir", "w", "--precision", "tensorfloat32"])
    assert args.precision == "tensorfloat32"
    with pytest.raises(SystemExit):
        train_cli.parse_args(["--domain", "shapes", "--workdir", "w", "--precision", "fp8"])


def test_resume_refuses_another_precision_but_accepts_runs_from_before_the_setting():
    cfg = TrainConfig(domain="shapes")
    saved = cfg.to_dict()
    _check_resume(saved, cfg, "w")
    old = {k: v for k, v in saved.items() if k != "precision"}  # a run recorded before the setting existed
    _check_resume(old, cfg, "w")
    with pytest.raises(ConfigError, match="precision 'highest' -> 'tensorfloat32'"):
        _check_resume(saved, cfg.replace(precision="tensorfloat32"), "w")
    with pytest.raises(ConfigError, match=r"precision \(not set\) -> 'default'"):
        _check_resume(old, cfg.replace(precision="default"), "w")
    # any setting newer than the run: absent means it ran with TrainConfig's default, which may continue it
    older = {k: v for k, v in saved.items() if k not in ("image_batch", "image_lambda")}
    _check_resume(older, cfg, "w")
    with pytest.raises(ConfigError, match=r"image_batch \(not set\) -> 1 \(only .*pass the run.s own values"):
        _check_resume(older, cfg.replace(image_lambda=0.0, image_batch=1), "w")
    # a built-in run from before the image term became its default: the new default is a change, named as such
    builtin = TrainConfig.for_domain("shapes")
    with pytest.raises(ConfigError, match=r"image_lambda \(not set\) -> 1.0"):
        _check_resume({k: v for k, v in builtin.to_dict().items() if k != "image_lambda"}, builtin, "w")


def test_machine_record():
    m = precision.machine()
    assert m["cpu_model"] and m["cpu_count"] >= 1 and 1 <= m["cpu_threads_usable"] <= m["cpu_count"]
    assert isinstance(m["env"], dict)
