"""Multi-host for real: two OS processes joined by ``jax.distributed`` on a localhost coordinator, one CPU device each.

``train.run --distributed`` on the built-in ``shapes`` domain (the cheapest configuration: 64 px generator, tiny
encoder, one shot, no inversion steps) trains 2 steps on two processes, a second pair resumes from its checkpoint
and trains a 3rd; one process with two devices trains the same 3 steps. The parameters must be bit-equal (with two
devices every cross-device sum adds two partial values, and a + b == b + a in floating point, so gloo's all-reduce
and XLA's in-process one give the same bits), and every file the run writes once must be written once and whole.

jax.distributed on CPU (jax 0.10.2) needs no flag: gloo is the default CPU collectives implementation
(``jax_cpu_collectives_implementation``). Each process must see one device, so the test's forced two-device
``XLA_FLAGS`` is replaced in the children.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from smis_jax.io.converted import load_converted
from smis_jax.nets import stylegan2
from smis_jax.nets.psp import EncoderConfig
from smis_jax.training import Checkpointer, StepConfig, abstract_train_state, data_mesh, state_sharding

REPO = Path(__file__).resolve().parents[1]
STEPS_FIRST, STEPS_TOTAL = 2, 3
ARGS = ["--domain", "shapes", "--shots", "1", "--inversion-steps", "0", "--batch-size", "2", "--save-every", "1",
        "--log-every", "1", "--image-every", "100", "--eval-every", "100"]
TIMEOUT = 1800  # seconds per run; each process compiles the step, preview and evaluation (minutes on 2 busy cores)


def _env(devices: int) -> dict[str, str]:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
    return {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir: Path, steps: int, *extra: str, devices: int = 1) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "train.run", *ARGS, "--workdir", str(workdir), "--max-steps", str(steps), *extra]
    return _popen(cmd, Path(f"{workdir}.{'-'.join(extra) or 'single'}.log"), devices)


def _popen(cmd: list[str], log: Path, devices: int) -> subprocess.Popen:
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(devices), stdout=f, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    return proc


def _pair(workdir: Path, steps: int, *extra: str) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{_free_port()}"
    return [_start(workdir, steps, "--distributed", "--coordinator", address, "--num-processes", "2",
                   "--process-id", str(i), *extra) for i in range(2)]


def _wait(procs: list[subprocess.Popen]) -> list[str]:
    """Every process's log; fails (ending the others) when one exits non-zero or hangs."""
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = [p.log.read_text() for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, f"{' '.join(p.args)}\n{log[-4000:]}"
    return logs


def _restore(workdir: Path):
    """The run's newest checkpoint, restored in this (two-device) process onto its mesh: (state, protos, meta)."""
    record = json.loads((workdir / "config.json").read_text())
    cfg = StepConfig(generator=stylegan2.GeneratorConfig.from_json(record["generator"]),
                     encoder=EncoderConfig.from_json(record["encoder"]), batch_size=record["train"]["batch_size"])
    checkpointer = Checkpointer(workdir / "checkpoints")
    try:
        abstract = abstract_train_state(cfg, state_sharding(data_mesh()))
        return checkpointer.restore(abstract)
    finally:
        checkpointer.close()


def _metrics(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]  # a duplicated or interleaved line fails here or below


@pytest.mark.slow
def test_two_processes_train_resume_and_match_one_process_on_two_devices(tmp_path):
    multi, single = tmp_path / "multi", tmp_path / "single"
    first = _wait(_pair(multi, STEPS_FIRST) + [_start(single, STEPS_TOTAL, devices=2)])[:2]
    resumed = _wait(_pair(multi, STEPS_TOTAL, "--resume"))

    for logs in (first, resumed):
        assert "synthesis checkpoint in" in logs[0] and "synthesis checkpoint in" in logs[1]
    assert "resuming from step 2" in resumed[0] and "resuming from step 2" in resumed[1]
    # The inversion cache is the writer's alone; the other process waits for its codes.
    assert "inverting 1 image(s)" in first[0] and "inverting" not in first[1]

    # Files written once: the same set as the single process's, each whole.
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())
    leftovers = [p for p in multi.rglob("*") if ".tmp" in p.name or "orbax-checkpoint-tmp" in p.name]
    assert not leftovers
    record = json.loads((multi / "config.json").read_text())
    argv = record["command"]
    assert argv[argv.index("--process-id") + 1] == "0" and "--resume" in argv  # the writer of the resumed run
    assert len(record["devices"]) == 2
    assert sorted(p.name for p in (multi / "inversion").iterdir()) == ["scene00.npz"]
    assert sorted(p.name for p in (multi / "images").iterdir()) == ["step_0000002.png", "step_0000003.png"]
    from PIL import Image

    for png in (multi / "images").iterdir():
        with Image.open(png) as im:
            im.load()

    # metrics.jsonl: one training line per step and one evaluation per run end, in order, as one process logs them.
    got, want = _metrics(multi), _metrics(single)
    train_steps = [m["step"] for m in got if "loss" in m]
    assert train_steps == [1, 2, 3]
    assert [m["step"] for m in got if "eval/miou" in m] == [2, 3]
    for key in ("loss", "grad_norm", "labelled_fraction", "w_norm"):
        assert [m[key] for m in got if "loss" in m] == [m[key] for m in want if "loss" in m]
    assert [m for m in got if m["step"] == 3 and "eval/miou" in m] == [m for m in want if "eval/miou" in m]

    # Checkpoints restore (onto this process's two-device mesh) and equal the single process's, bit for bit.
    state, protos, meta = _restore(multi)
    state_one, protos_one, _ = _restore(single)
    assert int(state.step) == STEPS_TOTAL == meta["step"]
    for a, b in zip(jax.tree.leaves((state, protos)), jax.tree.leaves((state_one, protos_one))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # export/ loads and holds the same encoder.
    config, trees = load_converted(multi / "export", "psp", ["params", "batch_stats"])
    _, trees_one = load_converted(single / "export", "psp", ["params", "batch_stats"])
    assert config["opts"]["steps"] == STEPS_TOTAL
    for a, b in zip(jax.tree.leaves(trees), jax.tree.leaves(trees_one)):
        np.testing.assert_array_equal(a, b)


# The default suite's variant: no training step (its compile is what makes the test above slow), but the same two
# processes, the real Checkpointer saving on both, a fresh one restoring onto the global mesh, and the files only
# the writer writes.
DRIVER = """
import json, sys
from pathlib import Path
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
from smis_jax import builtin, hosts, labeling
from smis_jax.io import load_generator
hosts.barrier("started")
from smis_jax import export
from smis_jax.nets.psp import EncoderConfig
from smis_jax.training import Checkpointer, StepConfig, abstract_like, data_mesh, init_train_state, state_sharding
work = Path(sys.argv[3])
g = load_generator(builtin.generator_path())
enc = EncoderConfig(input_nc=3, style_num=g.config.n_latent, widths=(8, 8, 8, 8), units=(1, 1, 1, 1),
                    style_dim=g.config.style_dim, se_reduction=8)
mesh = data_mesh()
sharding = state_sharding(mesh)
fresh = init_train_state(StepConfig(generator=g.config, encoder=enc, batch_size=2), seed=0)
# Process 1 would build other prototypes; from_writer makes them the writer's everywhere.
vectors = hosts.from_writer(np.full((3, 4), 1.0 + jax.process_index(), np.float32))
protos = labeling.DensePrototypes(vectors=vectors, present=np.ones(3, bool))

checkpointer = Checkpointer(work / "checkpoints")
state = jax.jit(lambda s: s.replace(step=s.step + 5, params=jax.tree.map(lambda p: p + 1, s.params)),
                out_shardings=sharding)(hosts.replicate(fresh, mesh))
checkpointer.save(state, protos, {"who": jax.process_index()})
checkpointer.wait()
checkpointer.close()
if hosts.is_writer():
    (work / "written.json").write_text(json.dumps({"by": jax.process_index()}))
    export.write(work / "export", enc, jax.device_get(state), g,
                    np.zeros((g.config.n_latent, g.config.style_dim), np.float32), {"steps": 5})
hosts.barrier("written")
assert json.loads((work / "written.json").read_text()) == {"by": 0}

checkpointer = Checkpointer(work / "checkpoints")
state, restored, meta = checkpointer.restore(abstract_like(fresh, sharding))
checkpointer.close()
leaves = jax.tree.leaves(state)
assert all(x.sharding == sharding and len(x.sharding.device_set) == 2 for x in leaves), leaves[0].sharding
assert int(jax.device_get(state.step)) == 5 and meta == {"who": 0, "step": 5}, meta
for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(jax.device_get(fresh.params))):
    np.testing.assert_array_equal(a, b + 1)
np.testing.assert_array_equal(restored.protos.vectors, np.ones((3, 4)))
print("ok", jax.process_index(), flush=True)
"""


@pytest.mark.e2e
def test_two_processes_checkpoint_on_both_and_restore_onto_the_global_mesh(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    address = f"127.0.0.1:{_free_port()}"
    logs = _wait([_popen([sys.executable, "-c", DRIVER, address, str(i), str(work)], tmp_path / f"p{i}.log",
                         devices=1) for i in range(2)])
    assert "ok 0" in logs[0] and "ok 1" in logs[1]
    assert [p.name for p in (work / "checkpoints").iterdir()] == ["5"]
    config, trees = load_converted(work / "export", "psp", ["params"])
    assert config["opts"] == {"steps": 5} and jax.tree.leaves(trees)
