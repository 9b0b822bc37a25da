"""Figures (matplotlib, smis_jax.viz / smis_jax.plots) and TensorBoard event files (smis_jax.tblog).

The runs themselves are checked end to end where they are made: tests/test_pipeline.py (train.run killed and
resumed: events equal to metrics.jsonl, no step twice, curves.png), tests/test_gan.py (train.stylegan2 resumed) and
tests/test_builtin.py (the main job: curves.png and groundtruth-iou.png).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smis_jax import plots, tblog, viz
from smis_jax.config import DOMAINS

REPO = Path(__file__).resolve().parents[1]


def assert_drawn(image: np.ndarray, size: tuple[int, int]) -> None:
    """A chart of ``size`` (H, W) pixels that is not blank: ink on a white page, in colour."""
    assert image.dtype == np.uint8 and image.shape == (*size, 3)
    white = (image == 255).all(-1)
    assert 0.5 < white.mean() < 0.98  # mostly page, but axes, text and data on it
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20  # several colours, antialiased text
    assert (image[..., 0].astype(int) - image[..., 2]).std() > 5  # not greyscale: coloured series


def assert_events_equal_metrics(run_dir: Path) -> list[tblog.Event]:
    """The run's event files hold every scalar of its metrics.jsonl at its step (float32, as TensorBoard keeps
    them), nothing else as scalars, and no (step, tag) twice; returns the events. The ground-truth evaluation's
    line, appended later by ``evaluate``, is not an event."""
    lines = [r for r in plots.read_metrics(run_dir / "metrics.jsonl") if "groundtruth" not in r]
    want = sorted((r["step"], t, float(np.float32(v))) for r in lines for t, v in tblog.scalars_of(r).items())
    events = tblog.read_events(run_dir)
    assert sorted((e.step, e.tag, e.value) for e in events if e.kind == "scalar") == want
    seen = [(e.step, e.tag) for e in events if e.kind != "session_start"]
    assert len(seen) == len(set(seen)), [k for k in seen if seen.count(k) > 1]
    return events


def test_line_and_bar_charts_have_their_size_and_are_drawn():
    line = viz.line_chart({"loss": [(s, 1 / s) for s in range(1, 50)], "eval": [(10, 0.4), (40, 0.3)]},
                          ylabel="W+ MSE", title="loss")
    assert_drawn(line, (360, 520))
    bars = viz.bar_chart({"baseline": {"mIoU": [0.29, 0.31, 0.30], "acc": 0.8}, "refined": {"mIoU": 0.33}},
                         ylabel="mIoU (0-1)", values=True, panel_size=(6.0, 3.0), dpi=80)
    assert_drawn(bars, (240, 480))
    # several panels: 2 columns, rows of panel_size each
    three = viz.charts([viz.Line({"a": [(0, 1), (1, 2)]}), viz.Bars({"x": {"s": 1.0}}), viz.Line({})])
    assert_drawn(three, (720, 1040))
    # the data is what is drawn: other values, other pixels
    assert not np.array_equal(line, viz.line_chart({"loss": [(s, 2 / s) for s in range(1, 50)],
                                                     "eval": [(10, 0.4), (40, 0.3)]}, ylabel="W+ MSE", title="loss"))
    with pytest.raises(TypeError, match="Line or Bars"):
        viz.charts(["loss"])
    with pytest.raises(ValueError, match="at least one panel"):
        viz.charts([])


def _metrics_rows():
    rows = [{"step": s, "loss": 0.7 - 0.01 * np.log1p(s), "loss_l2": 0.7 - 0.01 * np.log1p(s), "steps_per_s": 1.5}
            for s in range(50, 501, 50)]
    rows += [{"step": s, "eval/miou": 0.2 + s / 5000, "eval/per_class": {str(c): 0.1 * c for c in range(7)}}
             for s in (250, 500)]
    return rows


def test_run_curves_and_groundtruth_bars(tmp_path):
    truth = json.loads((REPO / "docs" / "builtin" / "groundtruth.json").read_text())
    history = np.exp(-np.linspace(0, 3, 40))[:, None] * np.linspace(0.5, 1, 5)[None]
    rows = [*_metrics_rows(), {"step": 500, "groundtruth": truth}]
    curves = plots.run_curves(rows, history, [f"scene{i:02d}" for i in range(5)], DOMAINS["shapes"].class_names,
                              {"l2_lambda": 1.0, "w_norm_lambda": 0.0})
    assert_drawn(curves, (720, 1040))  # loss | mIoU, per-class IoU | inversion
    # a run folder as train.run leaves it: curves from metrics.jsonl, config.json and the inversion cache
    run = tmp_path / "run"
    (run / "inversion").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"train": {"domain": "shapes"}, "shots": ["a", "b"]}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _metrics_rows()) + '{"step": 5')
    for k, name in enumerate("ab"):
        np.savez(run / "inversion" / f"{name}.npz", history=history[:, k])
    out = plots.write_run_curves(run)
    assert out == run / "curves.png" and np.asarray(Image.open(out)).shape == (720, 1040, 3)
    assert not np.array_equal(np.asarray(Image.open(out)), curves)
    # a built-in run with the image term: its loss on a log axis, and the ground truth scored at each eval
    # (mIoU beside self-consistency, and a per-class panel of its own)
    rows = [{**r, "loss_image": 0.04 / (1 + r["step"] / 100)} if "loss" in r else
            {**r, "eval/truth_miou": 0.5 + r["step"] / 2000, "eval/truth_accuracy": 0.9,
             "eval/truth_per_class": {str(c): 0.05 * c + 0.4 for c in range(7)}} for r in _metrics_rows()]
    truth_curves = plots.run_curves(rows, history, [f"scene{i:02d}" for i in range(5)],
                                    DOMAINS["shapes"].class_names, {"l2_lambda": 1.0, "image_lambda": 1.0})
    assert_drawn(truth_curves, (1080, 1040))  # loss | mIoU, per-class IoU | truth per class, inversion

    one = plots.groundtruth_bars(truth)
    assert_drawn(one, (960, 1040))  # per-class pseudo-labels, per-class synthesis, mIoUs; one column
    seeds = [truth, json.loads(json.dumps(truth).replace('"sky": 0.9', '"sky": 0.8')), truth]
    files = []
    for i, r in enumerate(seeds):
        files.append(tmp_path / f"gt{i}.json")
        files[-1].write_text(json.dumps(r))
    assert plots.main(["groundtruth", *map(str, files), "--out", str(tmp_path / "bars.png")]) == 0
    spread = np.asarray(Image.open(tmp_path / "bars.png"))
    assert_drawn(spread, (960, 1040)) and not np.array_equal(spread, one)  # whiskers and seed dots


def test_event_log_reads_back_equal_to_the_records_and_resumes_without_a_step_twice(tmp_path):
    records = [*_metrics_rows()]
    log = tblog.EventLog(tmp_path, enabled=True)
    log.config(0, {"train": {"lr": 0.001}})
    for r in records:
        log.record(r)
    log.image("preview", 250, np.full((6, 8, 3), 200, np.uint8))
    log.close()

    def scalars(events):
        return [(e.step, e.tag, e.value) for e in events if e.kind == "scalar"]

    events = tblog.read_events(tmp_path)
    want = [(r["step"], tag, float(np.float32(v))) for r in records for tag, v in tblog.scalars_of(r).items()]
    assert scalars(events) == want  # every number of every line, at its step, float32 as TensorBoard keeps them
    assert ("eval/per_class/3", 0.3) in {(t, round(v, 6)) for _, t, v in scalars(events)}  # nested, flattened
    assert [(e.step, e.tag) for e in events if e.kind == "text"] == [(0, "config")]
    (png,) = [e.value for e in events if e.kind == "image"]
    assert np.asarray(Image.open(__import__("io").BytesIO(png))).shape == (6, 8, 3)

    # A run killed after its checkpoint at 250 had logged up to 500 (and its last record was torn): the resumed
    # run continues from 250 and writes 300..500 again, each step once.
    with open(tblog.event_files(tmp_path)[0], "ab") as f:
        f.write(b"\x10\x00\x00")
    log = tblog.EventLog(tmp_path, resume_step=250, enabled=True)
    log.config(250, {"train": {"lr": 0.001}})
    for r in records:
        if r["step"] > 250:
            log.record({**r, "loss": 1.0} if "loss" in r else r)
    log.close()
    events = tblog.read_events(tmp_path)
    seen = [(e.step, e.tag) for e in events if e.kind in ("scalar", "image", "text")]
    assert len(seen) == len(set(seen))
    assert sorted(scalars(events)) == sorted((s, t, v if s <= 250 or t != "loss" else 1.0) for s, t, v in want)
    assert [(e.step, e.tag) for e in events if e.kind == "text"] == [(0, "config"), (250, "config")]
    assert [e.step for e in events if e.kind == "session_start"] == [251]  # TensorBoard's purge mark
    assert len(tblog.event_files(tmp_path)) == 2

    # resuming at the same checkpoint again: the previous resume's events after 250 and its config go
    assert tblog.forget_after(tmp_path, 250) == len([w for w in want if w[0] > 250]) + 2
    assert max(e.step for e in tblog.read_events(tmp_path)) == 250


def test_only_the_writer_writes_events(tmp_path):
    log = tblog.EventLog(tmp_path / "run", enabled=False)
    log.record({"step": 1, "loss": 1.0})
    log.image("preview", 1, np.zeros((2, 2, 3), np.uint8))
    log.close()
    assert not (tmp_path / "run").exists()


def test_event_writer_loads_neither_torch_nor_tensorflow(tmp_path):
    """tensorboardX imports torch whenever it is installed; our writer keeps it out of the training process."""
    code = ("import sys; from smis_jax import tblog; log = tblog.EventLog(sys.argv[1], enabled=True); "
            "log.record({'step': 1, 'loss': 0.5}); log.close(); "
            "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert [(e.step, e.tag, e.value) for e in tblog.read_events(tmp_path)] == [(1, "loss", 0.5)]


def test_tensorboard_itself_reads_the_event_files(tmp_path, monkeypatch):
    """TensorBoard's own reader (where the optional `tensorboard` app is installed: `.[tensorboard]`). The process
    has opened 8 logs before (as an xdist worker may have): the run's files are its 9th and 10th, which TensorBoard
    must still read in that order (it sorts by name)."""
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    monkeypatch.setattr(tblog, "_opened", [8])
    log = tblog.EventLog(tmp_path, enabled=True)
    log.config(0, {"lr": 0.001})
    for step in (5, 10, 15):
        log.record({"step": step, "loss": 1.0 / step})
    log.image("preview", 10, np.full((4, 6, 3), 100, np.uint8))
    log.close()
    log = tblog.EventLog(tmp_path, resume_step=10, enabled=True)  # killed after 15, resumed from 10
    log.record({"step": 15, "loss": 0.5})
    log.close()
    acc = ea.EventAccumulator(str(tmp_path), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0})
    acc.Reload()
    assert [(s.step, s.value) for s in acc.Scalars("loss")] == [(5, np.float32(0.2)), (10, np.float32(0.1)),
                                                                 (15, 0.5)]
    assert [(i.step, i.width, i.height) for i in acc.Images("preview")] == [(10, 6, 4)]
    assert "config/text_summary" in acc.Tags()["tensors"]
