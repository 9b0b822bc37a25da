"""The built-in domains: procedural shots and test masks, the shipped generator, and the main job end to end."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from smis_jax import builtin, export, tblog, viz
from smis_jax.builtin import shapes
from smis_jax.gan import trainer
from smis_jax.app import editor
from smis_jax.config import DOMAINS, TrainConfig
from smis_jax.io import load_generator
from test_figures import assert_drawn

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("domain", ["shapes", "shapes-scribbles"])
def test_shots_and_test_masks(domain):
    d = DOMAINS[domain]
    names, images, labels = builtin.shots(d, 5)
    assert names == tuple(f"scene{i:02d}" for i in range(5))
    assert images.shape == (5, 64, 64, 3) and labels.shape == (5, 256, 256) and labels.dtype == np.uint8
    again = builtin.shots(d, ("scene03",))
    assert np.array_equal(again[1][0], images[3]) and np.array_equal(again[2][0], labels[3])
    truth = shapes.downsample_mask(labels, 64)
    scenes = shapes.render_batch(shapes.SHOT_SEED, 0, 5)
    if d.mode == "dense":
        assert np.array_equal(truth, scenes.mask) and labels.max() < d.n_classes
    else:  # scribbles: 0 = not annotated, c + 1 on strokes of class c
        on = truth > 0
        assert 0 < on.mean() < 0.1 and np.array_equal(truth[on] - 1, scenes.mask[on])
    test_names, test_labels, test_truth = builtin.test_masks(d, 4)
    assert len(test_names) == 4 and test_labels.shape == (4, 256, 256) and test_truth.shape == (4, 64, 64)
    assert not np.array_equal(test_truth, scenes.mask[:4])  # held out: another stream
    with pytest.raises(ValueError, match="scene00"):
        builtin.shots(d, ("cat",))


def test_domain_schedule_is_a_default_that_flags_override():
    cfg = TrainConfig.for_domain("shapes")
    assert cfg.encoder == "tiny" and cfg.max_steps == dict(DOMAINS["shapes"].train_defaults)["max_steps"]
    assert TrainConfig.for_domain("shapes", max_steps=7, encoder=None).max_steps == 7
    assert TrainConfig.for_domain("faces").encoder == "ir_se50"  # other domains keep the original's settings
    # the built-in objective adds the image-space term (measured best, README); the real presets keep the paper's,
    # and --image-lambda 0 gives the paper's back on the built-in domain
    assert cfg.image_lambda == 1.0 and TrainConfig.for_domain("faces").image_lambda == 0.0
    assert TrainConfig.for_domain("shapes", image_lambda=0.0).image_lambda == 0.0
    # and an offset head for the generator's 16x16 block, which the image term trains: the paper's objective
    # (--image-lambda 0) turns the schedule's head off with it; asked for without a term, it is refused
    assert cfg.offset_res == 16 and TrainConfig.for_domain("faces").offset_res == 0
    assert TrainConfig.for_domain("shapes", image_lambda=0.0).offset_res == 0
    assert TrainConfig.for_domain("shapes", offset_res=0).offset_res == 0
    with pytest.raises(ValueError, match="offset_res 8 needs image_lambda or label_lambda"):
        TrainConfig.for_domain("shapes", image_lambda=0.0, offset_res=8)



def test_train_flags_come_from_trainconfig():
    """train.run's flags set TrainConfig fields by name, with TrainConfig's types; a flag not given leaves the
    domain's schedule (then TrainConfig's default) in place."""
    from train import run as train_cli

    args = train_cli.parse_args(["--domain", "shapes", "--workdir", "w", "--lr", "0.5", "--train-wplus",
                                 "--generator-size", "64", "--cos-th", "0.25"])
    cfg = TrainConfig.for_domain(args.domain, **{n: getattr(args, n) for n in train_cli.TRAIN_FLAGS})
    assert (cfg.learning_rate, cfg.train_wplus, cfg.generator_size, cfg.cos_th) == (0.5, True, 64, 0.25)
    assert cfg.max_steps == dict(DOMAINS["shapes"].train_defaults)["max_steps"] and cfg.topk == TrainConfig.topk
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(train_cli.TRAIN_FLAGS) <= fields

def test_shipped_generator_matches_its_provenance():
    path = builtin.generator_path()
    g = load_generator(path)
    prov = json.loads((path / "provenance.json").read_text())
    assert prov["params_sha256"] == trainer.params_sha256(g.params)  # the weights are the ones described
    assert g.config.size == 64 and g.config.to_json() == prov["generator"]
    for key in ("invocations", "kimg", "wall_s", "devices", "quality", "gan"):
        assert key in prov, key
    assert any(" ".join(i["argv"]).startswith("python -m train.stylegan2 train") for i in prov["invocations"])
    init = prov.get("init_generator")
    if init is not None:  # started from an earlier generator: its provenance is the one of the weights it started from
        assert init["provenance"]["params_sha256"] == init["params_sha256"]
    assert 0 <= prov["quality"]["oracle_confidence"] <= 1
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) < 25 * 2**20


def test_readme_quotes_the_shipped_generators_provenance():
    """The README's paragraph on the shipped generator quotes provenance.json: images seen, step, batch, wall time,
    architecture and the quality figures (each as printed, rounded from the file's value)."""
    prov = json.loads((builtin.generator_path() / "provenance.json").read_text())
    q, gan = prov["quality"], prov["gan"]
    text = " ".join((REPO / "README.md").read_text().replace("\\\n", " ").split())  # line breaks: spaces
    hours, minutes = divmod(int(prov["wall_s"] // 60), 60)
    expected = [
        f"It saw {prov['kimg']:g} kimg (step {prov['step']}, batch {gan['batch_size']}; {hours} h {minutes} min",
        f"(64 px, style dim {gan['style_dim']}, {gan['n_mlp']} mapping layers, channels "
        + ", ".join(f"{r}:{c}" for r, c in prov["generator"]["channels"].items()) + ";",
        f"the oracle assigns {100 * q['oracle_confidence']:.1f}% of its pixels",
        "its class frequencies are " + " / ".join(f"{f:.2f}" for f in q["class_freq"])
        + " against the data's " + " / ".join(f"{f:.2f}" for f in q["data_class_freq"]),
        f"(total-variation distance {q['class_freq_tv']:.3f})",
        f"neighbouring samples agree on {100 * q['layout_agreement']:.1f}% of their pixels against "
        f"{100 * q['data_layout_agreement']:.1f}% for real scenes",
        "same 512 samples: " + ", ".join(f"{k} {v:.2f}" for k, v in q["colour_fidelity"]["per_class"].items())
        + ", against " + " / ".join(f"{v:.2f}" for v in q["data_colour_fidelity"]["per_class"].values()),
        f"Of the {q['colour_fidelity']['n_regions']['water']} lake-shaped regions, "
        f"{q['colour_fidelity']['confusion'][1][3]} are drawn red",
        f"KID {q['kernel_distance']:.4f}, against {q['data_kernel_distance']:.4f} between two disjoint sets of 512",
    ]
    # every command that trained it, as recorded: the runs it started from first (init_generator's provenance)
    chain, p = [], prov
    while p:
        chain = p["invocations"] + chain
        p = (p.get("init_generator") or {}).get("provenance")
    expected += [" ".join(i["argv"]) for i in chain]
    for phrase in expected:
        assert phrase in text, phrase


def _run(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, **kw)


@pytest.mark.e2e
def test_main_job_end_to_end_on_a_short_schedule(tmp_path):
    """The README's main job with nothing but the package: train.run --domain shapes (no --data, no --stylegan),
    then evaluate (ground truth) and synthesize on its export."""
    work = tmp_path / "shapes"
    proc = _run(["-m", "train.run", "--domain", "shapes", "--workdir", str(work), "--max-steps", "4",
                 "--inversion-steps", "4", "--batch-size", "2", "--encoder", "tiny", "--save-every", "2",
                 "--log-every", "2", "--image-every", "4", "--eval-every", "4", "--precision", "tensorfloat32"],
                timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((work / "config.json").read_text())
    assert record["data"] == "built-in" and record["shots"] == [f"scene{i:02d}" for i in range(5)]
    assert f"jax {jax.__version__} (jaxlib " in proc.stdout and "backend cpu: 2 device(s) (cpu)" in proc.stdout
    # the flag is recorded and was in effect (this process's test set-up does not reach the CLI's), with the host
    assert record["train"]["precision"] == record["matmul_precision"] == "tensorfloat32"
    assert record["machine"]["cpu_model"] and record["machine"]["cpu_threads_usable"] >= 1
    assert (work / "export" / "config.json").is_file() and (work / "images" / "step_0000004.png").is_file()
    preview = np.asarray(Image.open(work / "images" / "step_0000004.png"))  # titled columns, legend below
    assert preview.shape[1] == 3 * 256 and (preview.shape[0] - viz.TITLE_HEIGHT - 2 * 256) % 16 == 0
    assert preview.shape[0] > viz.TITLE_HEIGHT + 2 * 256 and preview[:viz.TITLE_HEIGHT].min() < 128

    proc = _run(["-m", "smis_jax.evaluate", "--workdir", str(work), "--samples", "16"], timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    truth = json.loads((work / "groundtruth.json").read_text())
    for key in ("dense_1shot", "dense_5shot", "sparse_1shot", "sparse_5shot"):
        assert 0 <= truth["pseudo_labels"][key]["miou"] <= 1
    assert 0 <= truth["synthesis"]["miou"] <= 1 and 0 <= truth["synthesis_4styles"]["accuracy"] <= 1
    assert truth["inversion"]["psnr_db"] > 0 and set(truth["bf16_agreement"]) == {"dense", "sparse"}
    assert "pseudo-labels dense 5shot" in proc.stderr  # the table
    assert truth["matmul_precision"] == "tensorfloat32"  # evaluate applies the run's precision
    assert (work / "groundtruth.png").is_file()
    # Training scored its held-out synthesis on ground truth at each eval: at the last step exactly what the
    # evaluation measures on the export (same weights, masks, stored noise and oracle; another code path).
    lines = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    last_eval = [m for m in lines if "eval/truth_miou" in m][-1]
    assert last_eval["step"] == 4
    assert last_eval["eval/truth_miou"] == pytest.approx(truth["synthesis"]["miou"], abs=1e-6)
    assert last_eval["eval/truth_accuracy"] == pytest.approx(truth["synthesis"]["accuracy"], abs=1e-6)
    assert_drawn(np.asarray(Image.open(work / "curves.png")), (1080, 1040))  # + the ground truth's per-class panel
    assert_drawn(np.asarray(Image.open(work / "groundtruth-iou.png")), (960, 1040))
    assert any(e.tag == "loss" for e in tblog.read_events(work))  # TensorBoard followed the run

    # a checkpoint's whole ground truth: the step exported to W/step-N/export, its report beside it. Step 4 is the
    # run's last: the same synthesis as the export's (another export of the same weights); step 2 is another.
    for step in (4, 2):
        proc = _run(["-m", "smis_jax.evaluate", "--workdir", str(work), "--step", str(step), "--samples", "8"],
                    timeout=1500)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (work / f"step-{step}" / "export" / "config.json").is_file()
        at_step = json.loads((work / f"step-{step}" / "groundtruth.json").read_text())
        assert at_step["step"] == step and json.loads(proc.stdout)["groundtruth"]["step"] == step
    assert json.loads((work / "step-4" / "groundtruth.json").read_text())["synthesis"] == truth["synthesis"]
    assert export.load(work / "step-2" / "export").run["step"] == 2

    mask = tmp_path / "mask.png"
    Image.fromarray(builtin.test_masks(DOMAINS["shapes"], 1)[1][0]).save(mask)
    proc = _run(["-m", "smis_jax.synthesize", "--checkpoint", str(work / "export"), "--masks", str(mask),
                 "--out", str(tmp_path / "out")], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((tmp_path / "out").glob("*.png"))

    # the editor offers the held-out masks as examples, with no files
    shown = editor.Editor(work / "export", variants=0)
    names, labels, _ = builtin.test_masks(DOMAINS["shapes"])
    assert sorted(shown.examples) == names
    np.testing.assert_array_equal(shown.example(names[3]), labels[3])


def test_non_builtin_domains_still_need_data_and_a_generator():
    proc = _run(["-m", "train.run", "--domain", "faces", "--workdir", "/tmp/never"], timeout=120)
    assert proc.returncode == 2 and "--data and --stylegan" in proc.stderr
