"""python -m smis_jax.builtin.sweep: the spread arithmetic by hand, and the sweep end to end on a tiny schedule."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smis_jax.builtin import sweep
from test_figures import assert_drawn

REPO = Path(__file__).resolve().parents[1]


def _result(miou, sky, psnr, water=None):
    per_class = {"sky": sky, **({} if water is None else {"water": water})}
    return {"domain": "shapes", "step": 10, "n_samples": 8, "shots": ["scene00"],
            "pseudo_labels": {"dense_5shot": {"miou": miou, "accuracy": 0.9, "per_class": per_class}},
            "inversion": {"psnr_db": psnr, "per_shot_psnr_db": [1.0, 2.0]}, "matmul_precision": "highest"}


def test_spread_by_hand():
    # mIoU 0.5, 0.7, 0.9: mean 0.7, sd sqrt(((-0.2)^2 + 0 + 0.2^2) / 2) = 0.2, range 0.5 .. 0.9.
    # water only in seeds 1 and 2 (0.1, 0.3): mean 0.2, sd sqrt(0.02) = 0.1414. accuracy 0.9 everywhere: sd 0.
    rows = sweep.spread({0: _result(0.5, 0.8, 20.0), 1: _result(0.7, 0.8, 21.0, water=0.1),
                         2: _result(0.9, 0.8, 25.0, water=0.3)})
    m = rows["pseudo_labels/dense_5shot/miou"]
    assert m["mean"] == pytest.approx(0.7) and m["sd"] == pytest.approx(0.2) and (m["min"], m["max"]) == (0.5, 0.9)
    assert m["values"] == {0: 0.5, 1: 0.7, 2: 0.9} and m["n"] == 3
    w = rows["pseudo_labels/dense_5shot/per_class/water"]
    assert w["n"] == 2 and w["mean"] == pytest.approx(0.2) and w["sd"] == pytest.approx(math.sqrt(0.02))
    assert rows["pseudo_labels/dense_5shot/accuracy"]["sd"] == 0.0
    # psnr 20, 21, 25: mean 22, sd sqrt((4 + 1 + 9) / 2) = sqrt(7)
    assert rows["inversion/psnr_db"]["sd"] == pytest.approx(math.sqrt(7))
    assert not any(k.endswith(("step", "n_samples", "per_shot_psnr_db", "matmul_precision")) for k in rows)
    table = sweep.format_markdown(rows, [0, 1, 2], "t")
    assert "| pseudo-labels" not in table and "| pseudo_labels/dense_5shot/miou | 0.7000 +- 0.2000 | 0.5000 .. " \
        "0.9000 | 0.5000 | 0.7000 | 0.9000 |" in table
    assert "| pseudo_labels/dense_5shot/per_class/water | 0.2000 +- 0.1414 | 0.1000 .. 0.3000 | - | 0.1000 |" in table


def test_curves_by_hand(tmp_path):
    # seed 0 evaluates at 2 and 4, seed 1 at 2 only: step 2 averages both (0.4, 0.6 -> 0.5), step 4 is seed 0's
    # alone. A loss row without the image term leaves that curve out; a non-finite value is skipped.
    lines = {0: [{"step": 1, "loss_l2": 0.7}, {"step": 2, "eval/miou": 0.3, "eval/truth_miou": 0.4},
                 {"step": 4, "eval/miou": 0.35, "eval/truth_miou": 0.45}],
             1: [{"step": 1, "loss_l2": 0.5}, {"step": 2, "eval/miou": float("nan"), "eval/truth_miou": 0.6}]}
    runs = {}
    for seed, rows in lines.items():
        runs[seed] = tmp_path / f"seed-{seed}"
        runs[seed].mkdir()
        (runs[seed] / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs[2] = tmp_path / "never-ran"  # no metrics.jsonl: counted nowhere
    found = sweep.curves(runs)
    assert set(found) == {"eval/truth_miou", "eval/miou", "loss_l2"}
    truth = found["eval/truth_miou"]["steps"]
    assert truth[2] == {"values": {0: 0.4, 1: 0.6}, "mean": pytest.approx(0.5), "min": 0.4, "max": 0.6, "n": 2}
    assert truth[4]["values"] == {0: 0.45} and truth[4]["n"] == 1
    assert found["eval/miou"]["steps"][2]["values"] == {0: 0.3}
    assert found["loss_l2"]["steps"][1]["mean"] == pytest.approx(0.6)
    assert_drawn(sweep._curves_figure(found, [0, 1]), (360, 1040))


def test_bad_flags_exit_2(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "_run", lambda cmd, log: pytest.fail(f"ran {cmd}"))
    w = str(tmp_path / "w")
    for argv in (["--domain", "shapes", "--seeds", "0,0", "--workdir", w],
                 ["--domain", "shapes", "--seeds", "a", "--workdir", w],
                 ["--domain", "faces", "--seeds", "0", "--workdir", w],
                 ["--domain", "shapes", "--seeds", "0", "--workdir", w, "--seed", "3"],  # not an abbreviation
                 ["--domain", "shapes", "--seeds", "0", "--workdir", w, "--resume"],
                 ["--domain", "shapes", "--seeds", "0", "--workdir", w, "--at-step", "0"]):
        with pytest.raises(SystemExit) as e:
            sweep.main(argv)
        assert e.value.code == 2


@pytest.mark.e2e
def test_sweep_on_a_tiny_schedule_then_resumed(tmp_path):
    """Two seeds of the built-in main job on a tiny schedule: per-seed runs and ground truth, the spread files, the
    seed reaching the inversion (other codes, another loss), and a second call that only reads (finished seeds are
    skipped)."""
    work = tmp_path / "sweep"
    argv = [sys.executable, "-m", "smis_jax.builtin.sweep", "--domain", "shapes", "--seeds", "0,1", "--workdir", str(work),
            "--samples", "8", "--max-steps", "2", "--inversion-steps", "3", "--batch-size", "2", "--encoder", "tiny",
            "--save-every", "2", "--log-every", "1", "--image-every", "2", "--eval-every", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:] + "".join(
        p.read_text()[-3000:] for p in work.glob("seed-*.log"))
    summary = json.loads((work / "sweep.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["train_flags"][:2] == ["--max-steps", "2"]
    for seed in (0, 1):
        record = json.loads((work / f"seed-{seed}" / "config.json").read_text())
        assert record["train"]["seed"] == seed and record["train"]["max_steps"] == 2
    rows = summary["rows"]
    for name in ("pseudo_labels/dense_5shot/miou", "synthesis/miou", "inversion/mse", "bf16_agreement/dense",
                 "synthesis/per_class/sky"):
        r = rows[name]
        assert set(r["values"]) == {"0", "1"} and r["min"] <= r["mean"] <= r["max"], name
    assert rows["inversion/mse"]["values"]["0"] != rows["inversion/mse"]["values"]["1"]  # the seed drew other codes
    assert "over seeds 0, 1" in (work / "sweep.md").read_text()
    assert_drawn(np.asarray(Image.open(work / "sweep.png")), (960, 1040))
    # the training curves of both seeds: the ground truth scored at the eval step equals each run's final synthesis
    truth_curve = summary["curves"]["eval/truth_miou"]["steps"]["2"]
    for seed in ("0", "1"):
        assert truth_curve["values"][seed] == pytest.approx(rows["synthesis/miou"]["values"][seed], abs=1e-6)
    assert set(summary["curves"]) == {"eval/truth_miou", "eval/miou", "loss_l2", "loss_image"}
    assert np.asarray(Image.open(work / "sweep-curves.png")).shape[1] == 1040

    # again, asking for step 2's spread too: only the checkpoints are evaluated (step 2 is the runs' last, so its
    # exported checkpoints score what the runs' own exports scored)
    again = subprocess.run(argv + ["--at-step", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "seed 0: finished" in again.stderr and "seed 1: finished" in again.stderr
    assert "train.run" not in again.stderr and "seed 1: evaluate step 2" in again.stderr
    assert json.loads((work / "sweep.json").read_text())["rows"] == rows
    at_step = json.loads((work / "step-2" / "sweep.json").read_text())
    assert at_step["steps"] == {"0": 2, "1": 2} and at_step["rows"]["synthesis/miou"] == rows["synthesis/miou"]
    assert (work / "step-2" / "sweep.md").is_file() and (work / "seed-1" / "step-2" / "export").is_dir()
