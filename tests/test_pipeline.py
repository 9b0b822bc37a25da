"""End to end, as a user runs it: train.run on the real CelebAMask-HQ shots with the golden generator, a kill -9
after the first checkpoint, --resume, then synthesis and evaluation from what the run wrote.

The resumed run must end exactly where an uninterrupted run ends: we replay the 20 steps in this process from the
seed and the run's prototypes and compare with the final checkpoint.
"""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from smis_jax import evaluate as evaluate_cli, experiment, synthesize
from smis_jax.config import TrainConfig
from smis_jax.io import load_generator
from smis_jax.training import Checkpointer, StepConfig, abstract_train_state, init_train_state
from train import run as train_cli
from test_figures import assert_drawn, assert_events_equal_metrics

REPO = Path(__file__).resolve().parents[1]
STEPS, SAVE_EVERY = 20, 10


def _train_args(workdir, samples, golden, *extra):
    return ["--domain", "golden-faces", "--data", str(samples / "CelebAMask-HQ"),
            "--stylegan", str(golden / "stylegan2_tiny128.pt"), "--workdir", str(workdir), "--encoder", "tiny",
            "--max-steps", str(STEPS), "--inversion-steps", "2", "--save-every", str(SAVE_EVERY), "--log-every", "5",
            "--image-every", "10", "--eval-every", "20", *extra]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, samples, golden):
    workdir = tmp_path_factory.mktemp("e2e") / "run"
    cmd = [sys.executable, "-m", "train.run", *_train_args(workdir, samples, golden)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = workdir / "checkpoints" / str(SAVE_EVERY)  # orbax renames a finished step's folder into place
    deadline = time.monotonic() + 900
    while not first.is_dir():
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}):\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint after 15 minutes")
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / "export").exists() and not (workdir / "checkpoints" / str(STEPS)).exists()

    resumed = subprocess.run([*cmd, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming from step {SAVE_EVERY}" in resumed.stdout
    assert "reusing cached inversions" not in resumed.stdout  # resume restores the prototypes, no inversion
    return workdir


@pytest.mark.e2e
def test_run_writes_what_a_user_needs(run_dir):
    record = json.loads((run_dir / "config.json").read_text())
    assert record["train"]["domain"] == "golden-faces" and record["shots"] == ["0", "1", "10", "100", "1000"]
    assert len(record["devices"]) == 2  # the batch was split over both (forced) CPU devices
    assert record["versions"]["jax"] == jax.__version__ and record["backend"]["backend"] == "cpu"  # smis_jax.info
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [m for m in lines if "loss" in m]
    assert [m["step"] for m in train_lines][-2:] == [15, 20] and all(np.isfinite(m["loss"]) for m in train_lines)
    # Lines the killed run logged after its last checkpoint were dropped on --resume: each step once, in order.
    assert [m["step"] for m in train_lines] == sorted({m["step"] for m in train_lines})
    evals = [m for m in lines if "eval/miou" in m]
    assert evals and evals[-1]["step"] == STEPS and 0.0 <= evals[-1]["eval/miou"] <= 1.0
    grid = Image.open(run_dir / "images" / f"step_{STEPS:07d}.png")
    # [pseudo-label | sample | reconstruction] x batch 2, under a title strip and above a class legend
    assert grid.size[0] == 3 * 256 and grid.size[1] > 2 * 256
    assert sorted(p.name for p in (run_dir / "inversion").iterdir()) == [f"{n}.npz" for n in
                                                                          ["0", "1", "10", "100", "1000"]]


@pytest.mark.e2e
def test_tensorboard_events_and_curves_of_the_killed_and_resumed_run(run_dir):
    """The event files repeat metrics.jsonl (the killed run's events after its checkpoint at 10 are gone, each step
    once), hold the preview grids and the configuration of each start; curves.png is a drawn chart."""
    events = assert_events_equal_metrics(run_dir)
    assert {(e.step, e.tag) for e in events if e.kind == "scalar" and e.tag in ("loss", "eval/miou")} == {
        (5, "loss"), (10, "loss"), (15, "loss"), (20, "loss"), (20, "eval/miou")}
    images = {e.step: Image.open(io.BytesIO(e.value)) for e in events if e.kind == "image" and e.tag == "preview"}
    assert 20 in images and set(images) <= {10, 20}  # 10: if the killed run drew it before it was killed
    assert np.array_equal(np.asarray(images[20]), np.asarray(Image.open(run_dir / "images" / f"step_{STEPS:07d}.png")))
    configs = {e.step: json.loads("\n".join(line[4:] for line in e.value.splitlines()))
               for e in events if e.kind == "text" and e.tag == "config"}
    assert set(configs) == {0, SAVE_EVERY} and configs[SAVE_EVERY] == json.loads((run_dir / "config.json").read_text())
    assert_drawn(np.asarray(Image.open(run_dir / "curves.png")), (720, 1040))


@pytest.mark.e2e
def test_resumed_run_equals_uninterrupted_run(run_dir, golden):
    from jax.sharding import NamedSharding, PartitionSpec as P

    from smis_jax.training import data_mesh, make_train_step

    record = json.loads((run_dir / "config.json").read_text())
    cfg = TrainConfig.from_dict(record["train"])
    generator = load_generator(golden / "stylegan2_tiny128.pt")
    step_cfg = StepConfig(generator=generator.config, encoder=experiment.encoder_config(cfg, generator.config),
                          batch_size=cfg.batch_size)
    ckpt = Checkpointer(run_dir / "checkpoints")
    assert ckpt.latest_step() == STEPS
    final, protos, _ = ckpt.restore(abstract_train_state(step_cfg))
    ckpt.close()

    mesh = data_mesh()
    replicated = NamedSharding(mesh, P())
    latent_avg = np.broadcast_to(generator.latent_avg, (generator.config.n_latent, generator.config.style_dim))
    state, gen_params, protos, latent_avg = jax.device_put(
        (init_train_state(step_cfg, cfg.seed), generator.params, protos, latent_avg), replicated)
    step = make_train_step(step_cfg, mesh)
    for _ in range(STEPS):
        state, _ = step(state, gen_params, protos, latent_avg)
    for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(final)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.e2e
def test_synthesis_and_evaluation_from_the_run(run_dir, samples, tmp_path, capsys):
    masks = samples / "CelebAMask-HQ" / "test" / "labels"
    out = tmp_path / "synth"
    assert synthesize.main(["--checkpoint", str(run_dir / "export"), "--masks", str(masks), "--out", str(out),
                            "--styles", "2", "--seed", "1", "--grid"]) == 0
    for name in ["28000", "28001", "28002"]:
        for s in range(2):
            assert Image.open(out / f"{name}_s{s}.png").size == (256, 256)
        assert (out / "grid" / f"{name}.png").is_file()
    capsys.readouterr()
    assert evaluate_cli.main(["--workdir", str(run_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == STEPS and result["n_masks"] == 3 and 0.0 <= result["miou"] <= 1.0
    # The same number the run logged at its last step (same checkpoint, masks, noise buffers).
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert result["miou"] == pytest.approx([m for m in lines if "eval/miou" in m][-1]["eval/miou"], rel=1e-6)


@pytest.mark.e2e
def test_a_copied_export_synthesises_and_evaluates_alone(run_dir, samples, tmp_path, capsys):
    """export/ copied elsewhere, the run folder renamed away: synthesis and evaluation need nothing else."""
    import shutil

    copy = tmp_path / "elsewhere" / "export"
    shutil.copytree(run_dir / "export", copy)
    moved = run_dir.with_name(run_dir.name + "-away")
    run_dir.rename(moved)
    try:
        masks = tmp_path / "masks"
        shutil.copytree(samples / "CelebAMask-HQ" / "test" / "labels", masks)
        capsys.readouterr()
        assert evaluate_cli.main(["--checkpoint", str(copy), "--masks", str(masks)]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["step"] == STEPS and result["n_masks"] == 3
        lines = [json.loads(line) for line in (moved / "metrics.jsonl").read_text().splitlines()]
        assert result["miou"] == pytest.approx([m for m in lines if "eval/miou" in m][-1]["eval/miou"], rel=1e-6)
        assert synthesize.main(["--checkpoint", str(copy), "--masks", str(masks), "--out", str(tmp_path / "o")]) == 0
        assert len(list((tmp_path / "o").glob("*.png"))) == 3
        config = json.loads((copy / "config.json").read_text())
        assert config["run"]["domain"] == "golden-faces" and config["run"]["shot_names"] == ["0", "1", "10", "100", "1000"]
        # An export without its prototypes cannot be evaluated; the error says what is missing.
        shutil.rmtree(copy / "prototypes")
        capsys.readouterr()
        assert evaluate_cli.main(["--checkpoint", str(copy), "--masks", str(masks)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no training run record and prototypes" in err
    finally:
        moved.rename(run_dir)


@pytest.mark.e2e
def test_existing_run_needs_resume(run_dir, samples, golden, capsys):
    assert train_cli.main(_train_args(run_dir, samples, golden)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds checkpoints up to step 20; pass --resume" in err


def _copy_pairs(src: Path, dst: Path, names, label_names=None):
    (dst / "train" / "images").mkdir(parents=True)
    (dst / "train" / "labels").mkdir(parents=True)
    for n in names:
        (dst / "train" / "images" / f"{n}.jpg").write_bytes((src / "train" / "images" / f"{n}.jpg").read_bytes())
    for n in label_names or names:
        (dst / "train" / "labels" / f"{n}.png").write_bytes((src / "train" / "labels" / f"{n}.png").read_bytes())


@pytest.mark.parametrize("problem", ["no-data", "unpaired", "bad-class", "wrong-size", "bad-shots"])
def test_bad_input_is_one_line_error(problem, tmp_path, samples, golden, capsys):
    data_dir = tmp_path / "data"
    extra = []
    domain = "golden-faces"
    if problem == "no-data":
        expected = f"{data_dir}: data folder not found"
    elif problem == "unpaired":
        _copy_pairs(samples / "CelebAMask-HQ", data_dir, ["0", "1"], label_names=["0", "10"])
        expected = "images without a label"
    elif problem == "bad-class":
        _copy_pairs(samples / "CelebAMask-HQ", data_dir, ["0"])
        bad = np.array(Image.open(data_dir / "train" / "labels" / "0.png").convert("L"))
        bad[5, 7] = 42
        Image.fromarray(bad).save(data_dir / "train" / "labels" / "0.png")
        extra = ["--shots", "1"]
        expected = "0.png: label value 42 at (x=7, y=5) is not a class id of a 19-class model"
    elif problem == "wrong-size":
        domain = "faces"
        expected = "domain 'faces' expects a 1024px generator"
    else:
        _copy_pairs(samples / "CelebAMask-HQ", data_dir, ["0"])
        extra = ["--shots", "3"]
        expected = "--shots 3 asks for more pairs than the 1 in train/"
    args = _train_args(tmp_path / "work", samples, golden, *extra)
    args[args.index("--domain") + 1] = domain
    args[args.index("--data") + 1] = str(data_dir)
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "work" / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------------------------
# Interrupts, damaged checkpoints and changed settings (issue 13), on copies of the run above.


@pytest.mark.e2e
def test_resume_with_changed_settings_writes_nothing(run_dir, samples, golden, capsys):
    before = {p: p.read_bytes() for p in (run_dir / "config.json", run_dir / "metrics.jsonl")}
    args = _train_args(run_dir, samples, golden, "--resume", "--seed", "3")
    args[args.index("--encoder") + 1] = "small"
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot resume {run_dir / 'config.json'}: changed setting(s) ") and \
        err.count("\n") == 1, err
    assert "encoder 'tiny' -> 'small'" in err and "seed 0 -> 3" in err
    assert {p: p.read_bytes() for p in before} == before  # config.json and metrics untouched


def _copy_run(run_dir: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, dst)
    return dst


@pytest.mark.e2e
def test_resume_falls_back_past_a_damaged_checkpoint(run_dir, samples, golden, tmp_path, capsys):
    import shutil

    work = _copy_run(run_dir, tmp_path / "run")
    shutil.rmtree(work / "checkpoints" / str(STEPS) / "state")
    # --max-steps 10: the restored step is the end, so only the restore and the export run (no training).
    assert train_cli.main(_train_args(work, samples, golden, "--resume", "--max-steps", str(SAVE_EVERY))) == 0
    out = capsys.readouterr().out
    assert f"warning: checkpoint {work / 'checkpoints' / str(STEPS)} is damaged (" in out, out
    assert f"resuming from step {SAVE_EVERY}" in out
    assert (work / "checkpoints-damaged" / str(STEPS)).is_dir()  # kept for the user, out of the way of new saves
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == [str(SAVE_EVERY)]

    (work / "checkpoints" / str(SAVE_EVERY) / "state" / "_METADATA").unlink()
    assert train_cli.main(_train_args(work, samples, golden, "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: no usable checkpoint in {work / 'checkpoints'} (damaged: 10)" in err, err


@pytest.mark.e2e
def test_damaged_export_is_one_line(run_dir, samples, tmp_path, capsys):
    export = _copy_run(run_dir / "export", tmp_path / "export")
    chunks = [p for p in (export / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert chunks
    for chunk in chunks:  # the array data; the tree's metadata stays
        chunk.unlink()
    assert synthesize.main(["--checkpoint", str(export), "--masks", str(samples / "CelebAMask-HQ" / "test" / "labels"),
                            "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {export / 'params'}: tree 'params' cannot be read" in err, err


def _start(cmd, log: Path) -> subprocess.Popen:
    env = {**os.environ, "SMIS_PROGRESS_SECONDS": "0"}  # off a terminal: a progress line per update
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)


def _wait_for(proc: subprocess.Popen, log: Path, pattern: str, timeout: float = 900) -> str:
    import re

    deadline = time.monotonic() + timeout
    while not re.search(pattern, log.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {pattern!r} (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return log.read_text()


def _interrupt(proc: subprocess.Popen, log: Path) -> tuple[float, str]:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running 60 s after SIGINT:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert "Traceback" not in text and "Fatal Python error" not in text, text[-3000:]
    assert text.splitlines()[-1] == train_cli.INTERRUPTED_MESSAGE
    return time.monotonic() - t0, text


@pytest.mark.e2e
def test_ctrl_c_during_training_and_inversion_exits_130(run_dir, samples, golden, tmp_path):
    # Training (resumed at 20 for 100000 steps, everything compiled already): stopped within seconds, the
    # checkpoints intact, and the log shows plain progress lines with the step, the loss and the rate.
    work = _copy_run(run_dir, tmp_path / "run")
    log = tmp_path / "train.log"
    proc = _start([sys.executable, "-m", "train.run",
                   *_train_args(work, samples, golden, "--resume", "--max-steps", "100000")], log)
    _wait_for(proc, log, r"train \(resumed at 20\): +0% \d+/99980 \[[0-9:<]+, [0-9.]+step/s, loss [0-9.]+\]")
    seconds, _ = _interrupt(proc, log)
    assert seconds < 15
    ckpt = Checkpointer(work / "checkpoints")
    assert ckpt.latest_step() >= STEPS and ckpt.latest_step() % SAVE_EVERY == 0
    ckpt.close()

    # Inversion (a fresh run of 100000 steps): SIGINT while it compiles or runs its first chunk, when the main
    # thread is inside XLA; nothing half-written is left in the inversion cache.
    work = tmp_path / "fresh"
    log = tmp_path / "invert.log"
    proc = _start([sys.executable, "-m", "train.run",
                   *_train_args(work, samples, golden, "--inversion-steps", "100000", "--shots", "1")], log)
    _wait_for(proc, log, r"inverting 1 image\(s\) for 100000 steps")
    time.sleep(3)
    seconds, _ = _interrupt(proc, log)
    assert seconds < 15
    assert (work / "config.json").is_file()
    for sub in ("inversion", "checkpoints"):
        assert not (work / sub).exists() or not any((work / sub).iterdir()), sub



def _kill_when(proc: subprocess.Popen, log: Path, ready, timeout: float = 900) -> None:
    """SIGKILL ``proc`` the moment ``ready()`` is true (polled every few milliseconds)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the moment never came (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.003)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow  # several train.run processes; test_training's quick subprocess test covers a refused save
def test_kill_9_during_a_checkpoint_write_or_the_export_loses_nothing(run_dir, samples, golden, tmp_path):
    import shutil

    from smis_jax import export

    work = _copy_run(run_dir, tmp_path / "run")
    shutil.rmtree(work / "export")
    # kill -9 while checkpoint 30 is being written (orbax writes into a temporary folder, then renames it).
    log = tmp_path / "a.log"
    proc = _start([sys.executable, "-m", "train.run", *_train_args(work, samples, golden, "--resume",
                                                                    "--max-steps", "40")], log)
    _kill_when(proc, log, lambda: any("tmp" in p.name for p in (work / "checkpoints").iterdir()))
    ckpt = Checkpointer(work / "checkpoints")
    assert ckpt.latest_step() in (STEPS, STEPS + SAVE_EVERY)  # 30 only if its rename won the race
    ckpt.close()
    # --resume continues from the newest whole checkpoint and finishes; its export is whole.
    resumed = subprocess.run([sys.executable, "-m", "train.run", *_train_args(work, samples, golden, "--resume",
                                                                              "--max-steps", "40")],
                             cwd=REPO, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert export.load(work / "export").run["step"] == 40

    # kill -9 while the export is being written (its config.json comes last): the half export is refused in one
    # line, and the same command with --resume (nothing left to train) writes it again, whole.
    log = tmp_path / "b.log"
    proc = _start([sys.executable, "-m", "train.run", *_train_args(work, samples, golden, "--resume",
                                                                    "--max-steps", "40")], log)
    _kill_when(proc, log, lambda: (work / "export").is_dir() and not (work / "export" / "config.json").exists()
               and any((work / "export").iterdir()))
    if not (work / "export" / "config.json").exists():  # caught in the middle (not after the last file)
        bad = subprocess.run([sys.executable, "-m", "smis_jax.evaluate", "--checkpoint", str(work / "export")],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no config.json" in bad.stderr, bad.stderr
    again = subprocess.run([sys.executable, "-m", "train.run", *_train_args(work, samples, golden, "--resume",
                                                                            "--max-steps", "40")],
                           cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert export.load(work / "export").run["step"] == 40

@pytest.mark.slow  # several train.run processes; test_training's quick subprocess test covers a refused save
def test_a_disk_that_fills_mid_run_stops_it_in_one_line_and_loses_nothing(run_dir, samples, golden, tmp_path):
    """A checkpoint the disk refuses stops the run at that step with one line; the earlier checkpoints stay intact and
    resumable, and metrics.jsonl claims no step that no checkpoint holds. The refusal is real: the process's file-size
    limit (RLIMIT_FSIZE, EFBIG), which lets the small files through and refuses the checkpoint's data as a full disk
    would (root ignores permissions)."""
    import shutil

    work = _copy_run(run_dir, tmp_path / "run")
    shutil.rmtree(work / "export")
    before = {p: p.read_bytes() for p in (work / "checkpoints").rglob("*") if p.is_file()}
    args = _train_args(work, samples, golden, "--resume", "--max-steps", str(STEPS + SAVE_EVERY))
    # The child sets the limit itself (no fork-time hook in this multithreaded process); with SIGXFSZ ignored,
    # write() fails with EFBIG instead of killing it.
    limited = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); "
               "sys.argv = ['train.run', *sys.argv[1:]]; runpy.run_module('train.run', run_name='__main__')")
    env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}  # the cache's own writes would meet the limit
    proc = subprocess.run([sys.executable, "-c", limited, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    failed = STEPS + SAVE_EVERY
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: saving checkpoint {failed} in {work / 'checkpoints'} failed (") and \
        "File too large" in lines[-1] and f"the newest intact checkpoint is step {STEPS}" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr) < 3000, proc.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) < failed, steps  # the failed step's line waited for its checkpoint, which never came
    # Every file of the earlier checkpoints is as it was, and the run resumes from them to the end.
    assert all(p.read_bytes() == data for p, data in before.items())
    resumed = subprocess.run([sys.executable, "-m", "train.run", *args], cwd=REPO, capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming from step {STEPS}" in resumed.stdout and (work / "export" / "config.json").is_file()

