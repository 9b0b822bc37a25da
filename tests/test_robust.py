"""Runs that fail early and in one line (issue 13), the cheap cases: nothing here compiles a network.

Tests run as root, which ignores file permissions; an unwritable folder is simulated by a path that cannot be
created (a folder under a regular file, or a regular file where a run expects a folder).
"""

import io

import jax
import numpy as np
import pytest

from smis_jax import synthesize as syn
from smis_jax.inversion import invert_cached
from smis_jax.io import load_generator
from smis_jax.progress import Progress
from train import run as train_cli


def _args(workdir, samples, golden, *extra):
    return ["--domain", "golden-faces", "--data", str(samples / "CelebAMask-HQ"),
            "--stylegan", str(golden / "stylegan2_tiny128.pt"), "--workdir", str(workdir), "--encoder", "tiny",
            "--max-steps", "4", "--inversion-steps", "2", *extra]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_resume_without_a_run_is_refused(state, tmp_path, samples, golden, capsys):
    workdir = tmp_path / "run"
    if state == "empty":
        workdir.mkdir()
    assert train_cli.main(_args(workdir, samples, golden, "--resume")) == 2
    assert f"--resume: {workdir} holds no run to resume ({state} folder)" in _one_error_line(capsys)
    assert workdir.exists() == (state == "empty") and not (workdir.exists() and any(workdir.iterdir()))


@pytest.mark.parametrize("where", ["workdir", "checkpoints"])
def test_unwritable_run_folder_is_one_line_before_any_work(where, tmp_path, samples, golden, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file")
    if where == "workdir":
        workdir, bad = blocker / "run", blocker / "run"  # cannot be created: its parent is a file
    else:
        workdir = tmp_path / "run"
        workdir.mkdir()
        bad = workdir / "checkpoints"
        bad.write_text("not a folder")  # as unusable as a read-only folder, even for root
    assert train_cli.main(_args(workdir, samples, golden)) == 2
    err = _one_error_line(capsys)
    assert f"{bad}: run " in err and "cannot be written" in err, err
    assert where == "workdir" or sorted(p.name for p in workdir.iterdir()) == ["checkpoints"]  # nothing written


def test_synthesize_unwritable_out_is_one_line(tmp_path, samples, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file")
    out = blocker / "out"
    # The checkpoint is never opened: the output folder is checked first.
    assert syn.main(["--checkpoint", str(tmp_path / "never-read"), "--masks",
                     str(samples / "CelebAMask-HQ" / "test" / "labels"), "--out", str(out)]) == 2
    assert f"{out}: output folder cannot be written" in _one_error_line(capsys)


def test_damaged_inversion_cache_is_named_and_recomputed(tmp_path, golden):
    generator = load_generator(golden / "stylegan2_tiny128.pt")
    targets = np.zeros((2, 256, 256, 3), np.float32)
    cache = tmp_path / "inversion"
    kwargs = dict(steps=0, lpips_lambda=0.0)  # steps=0: the starting codes, nothing compiled
    first = invert_cached(cache, ["a", "b"], generator, None, targets, jax.random.key(0), log=print, **kwargs)
    assert not first.reused and sorted(p.name for p in cache.iterdir()) == ["a.npz", "b.npz"]
    good = (cache / "a.npz").read_bytes()
    (cache / "b.npz").write_bytes((cache / "b.npz").read_bytes()[:100])  # truncated, as by a full disk or a kill

    lines = []
    again = invert_cached(cache, ["a", "b"], generator, None, targets, jax.random.key(0), log=lines.append, **kwargs)
    assert not again.reused and len(lines) == 2 and lines[1].startswith("inverting 2 image(s) for 0 steps"), lines
    assert lines[0].startswith(f"cached inversions in {cache} are damaged: b.npz (") and "recomputing" in lines[0]
    np.testing.assert_array_equal(again.w_plus, first.w_plus)
    assert (cache / "a.npz").read_bytes() == good
    assert sorted(p.name for p in cache.iterdir()) == ["a.npz", "b.npz"]  # rewritten whole, no temporary left

    lines = []
    third = invert_cached(cache, ["a", "b"], generator, None, targets, jax.random.key(0), log=lines.append, **kwargs)
    assert third.reused and lines[0].startswith("reusing cached inversions")


def test_progress_off_a_terminal_prints_plain_lines_at_an_interval():
    out = io.StringIO()  # not a terminal, like a log file
    bar = Progress(total=4, desc="train", file=out, unit="step", log_interval=0.0)
    for i in range(4):
        bar.postfix = f"loss {1.0 / (i + 1):.3f}"
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[1].startswith("train:  50% 2/4 [") and "step/s, loss 0.500]" in lines[1], lines
    assert "|" not in "".join(lines) and "\r" not in out.getvalue()
    assert lines[3].startswith("train: 100% 4/4 [") and lines[3].endswith("step/s, loss 0.250]")  # not repeated at close

    quiet = io.StringIO()
    bar = Progress(total=4, desc="train", file=quiet, log_interval=3600.0)
    bar.update(2)
    assert quiet.getvalue() == ""  # nothing between intervals


@pytest.mark.parametrize("cli", ["evaluate", "synthesize", "train"])
def test_help_cites_only_files_that_exist(cli, capsys):
    import re
    from pathlib import Path

    from smis_jax import evaluate

    main = {"evaluate": evaluate.main, "synthesize": syn.main, "train": train_cli.main}[cli]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    repo = Path(__file__).resolve().parents[1]
    for doc in re.findall(r"[\w/.-]+\.md\b", text):
        assert (repo / doc).is_file(), f"{cli} --help cites {doc}, which is not in the repository"


_LOOP = """
import sys, time
from smis_jax import interrupt
print("ready", flush=True)
try:
    with interrupt.handled("interrupted; resume with --resume", grace={grace}):
        while True:
            {body}
except KeyboardInterrupt:
    interrupt.exit_now(interrupt.INTERRUPTED, "interrupted; resume with --resume")
"""


@pytest.mark.parametrize("where", ["python-loop", "stuck-in-native-code"])
def test_sigint_exits_130_in_one_line(where):
    # A loop that calls check() stops at once; a main thread that never returns to the loop (as inside a long
    # compile; time.sleep resumes after the handler) is ended by the watchdog after its grace period.
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    body = "interrupt.check(); time.sleep(0.01)" if where == "python-loop" else "time.sleep(3600)"
    code = _LOOP.format(grace=1.0, body=body)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    time.sleep(0.2)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    seconds = time.monotonic() - t0
    assert proc.returncode == 130 and err == "interrupted; resume with --resume\n", err
    assert seconds < (1.0 if where == "python-loop" else 5.0)


def test_synthesize_advice_names_a_command_that_exists(golden, samples, tmp_path, capsys):
    # A pSp .pt whose encoder stages cannot be inferred: synthesize has no --units; the advice is the convert command.
    src = golden / "psp_tiny_celebamask.pt"
    assert syn.main(["--checkpoint", str(src), "--masks", str(samples / "CelebAMask-HQ" / "test" / "labels"),
                     "--out", str(tmp_path / "out")]) == 2
    err = _one_error_line(capsys)
    assert f"`python -m convert psp {src} OUT --units u1,u2,u3,u4`" in err, err


def test_shots_warn_about_distorted_or_dense_masks(tmp_path, samples):
    from PIL import Image

    from smis_jax import experiment
    from smis_jax.config import get_domain

    src = samples / "CelebAMask-HQ" / "train"
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "labels").mkdir()
    (tmp_path / "train" / "images" / "0.jpg").write_bytes((src / "images" / "0.jpg").read_bytes())
    label = tmp_path / "train" / "labels" / "0.png"
    Image.open(src / "labels" / "0.png").convert("L").resize((300, 200), Image.NEAREST).save(label)
    lines = []
    experiment.load_shots(tmp_path, get_domain("golden-faces"), 1, log=lines.append)
    assert lines == [f"warning: {label}: label is 300x200 but its image 0.jpg is 1024x1024; both are resized to a "
                     f"square, so their aspect ratios no longer match"]

    Image.new("L", (1024, 1024), 1).save(label)  # every pixel annotated: a dense mask
    lines = []
    experiment.load_shots(tmp_path, get_domain("golden-landmarks"), 1, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith(f"warning: {label}: every pixel is annotated (no class 0)")
    lines = []
    experiment.load_shots(tmp_path, get_domain("golden-faces"), 1, log=lines.append)
    assert lines == []  # a dense domain: nothing to say
