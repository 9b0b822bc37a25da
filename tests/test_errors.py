"""Errors a user causes are one line (exit 2); anything else is a bug and keeps its traceback (issue 12)."""

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import smis_jax
from smis_jax.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _error_classes():
    found = {}
    for info in pkgutil.walk_packages(smis_jax.__path__, "smis_jax."):
        if info.name.endswith(".__main__"):  # importing it would start the program
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_error_class_of_the_package_is_a_user_error():
    classes = _error_classes()
    # The ones named in issue 12, so that a rename cannot make this test vacuous.
    for name in ["smis_jax.errors.ConfigError", "smis_jax.errors.ConversionError",
                 "smis_jax.io.torchfile.TorchFileError", "smis_jax.io.nvidiafile.NvidiaPickleError",
                 "smis_jax.training.TrainingError", "smis_jax.files.FolderError", "smis_jax.data.DataError",
                 "smis_jax.data.LabelError", "smis_jax.io.lpips.LPIPSWeightsError", "smis_jax.labeling.LabelingError",
                 "smis_jax.bench.presets.BenchError", "smis_jax.app.editor.InputError"]:
        assert name in classes, name
    not_user = sorted(name for name, cls in classes.items() if not issubclass(cls, UserError))
    assert not_user == [], not_user


def test_config_error_keeps_its_import_paths():
    from smis_jax import config, errors

    assert config.ConfigError is errors.ConfigError and issubclass(config.ConfigError, ValueError)


# A real CLI in a real process. The "bug" is injected by replacing the function the CLI calls with one that raises
# a plain ValueError, as an internal mistake would; the CLI's own error handling is what runs and is checked.
_BUGGY_CONVERT = ("import sys, smis_jax.io.stylegan2 as m\n"
                  "def convert(*a, **k):\n"
                  "    raise ValueError('an internal mistake')\n"
                  "m.convert = convert\n"
                  "from convert.__main__ import main\n"
                  "sys.exit(main(sys.argv[1:]))\n")


def _start(code, *args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("cli", ["convert", "synthesize"])
def test_internal_bug_shows_a_traceback_and_user_error_is_one_line(cli, tmp_path):
    if cli == "convert":
        main = "from convert.__main__ import main\nimport sys\nsys.exit(main(sys.argv[1:]))\n"
        user_args = ["stylegan2", tmp_path / "missing.pt", tmp_path / "out"]
        buggy = _BUGGY_CONVERT
        bug_args = ["stylegan2", tmp_path / "missing.pt", tmp_path / "out2"]
        expected = f"error: {tmp_path / 'missing.pt'}: "
    else:
        main = "from smis_jax.synthesize import main\nimport sys\nsys.exit(main(sys.argv[1:]))\n"
        user_args = ["--checkpoint", tmp_path / "none", "--masks", tmp_path, "--out", tmp_path / "out"]
        buggy = ("import sys, smis_jax.synthesize as s\n"
                 "def run(*a, **k):\n"
                 "    raise ValueError('an internal mistake')\n"
                 "s.run = run\n"
                 "sys.exit(s.main(sys.argv[1:]))\n")
        bug_args = user_args
        expected = f"error: {tmp_path}: no image files"
    user, bug = _start(main, *user_args), _start(buggy, *bug_args)
    _, err = user.communicate(timeout=120)
    assert user.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected) and "Traceback" not in err, err

    _, err = bug.communicate(timeout=120)
    assert bug.returncode == 1, err  # Python's own exit status for an uncaught exception, not the CLI's 2
    assert "Traceback (most recent call last)" in err and err.strip().endswith("ValueError: an internal mistake"), err
    assert "error: an internal mistake" not in err
