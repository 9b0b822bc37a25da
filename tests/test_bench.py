"""`python -m smis_jax.bench ... --quick` runs and reports parseable JSON lines with the documented fields.

No speed assertions: timings on a shared machine say nothing about correctness. The tiny shapes keep each run to a
few compiles; the train-step smoke run compiles the encoder's backward pass and Ranger twice (the original's step
and ours, ~30 s each on 2 CPU cores), so it is marked slow.
"""

import json

import pytest

from smis_jax import bench

COMMON = {"bench", "path", "config", "batch", "resolution", "dtype", "device", "platform", "device_kind",
          "time_s_median", "times_s", "repeats", "compile_s", "first_call_s", "flops_per_item", "flops_source",
          "achieved_flops_per_s", "peak_flops_per_s", "peak_fraction", "memory"}
RATE = {"labeling": "labels_per_s", "train-step": "images_per_s", "inversion": "steps_per_s"}


def _run(tmp_path, capsys, argv):
    out = tmp_path / "results.jsonl"
    assert bench.main([*argv, "--json-out", str(out)]) == 0
    table = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows][:2] == ["original", "ours"], rows
    for row in rows:
        assert COMMON <= set(row), COMMON - set(row)
        assert row[RATE[argv[0]]] > 0 and row["time_s_median"] > 0
        assert len(row["times_s"]) == row["repeats"] >= 1
        assert row["compile_s"] >= 0 and row["flops_per_item"] > 0
        assert row["memory"]["peak_bytes"] > 0 and row["memory"]["source"]
        assert row["peak_fraction"] == "unknown" or 0 < row["peak_fraction"]
    ours = rows[1]
    assert ours["speedup_vs_original"] > 0
    assert "ours" in table and "original" in table and "speedup" in table
    return rows


@pytest.mark.parametrize("mode, dtype", [("dense", "float32"), ("sparse", "bfloat16")])
def test_labeling_quick(tmp_path, capsys, mode, dtype):
    rows = _run(tmp_path, capsys, ["labeling", "--quick", "--mode", mode, "--dtype", dtype, "--repeats", "1"])
    ours = rows[1]
    assert (ours["config"], ours["mode"], ours["dtype"], ours["label_res"]) == ("tiny", mode, dtype, 256)
    assert 0 <= ours["agree_with_original"] <= 1
    if dtype == "bfloat16":
        assert 0 <= ours["agree_with_float32"] <= 1
        assert ours["generator_dtype"]["end_to_end"] is True
    if mode == "sparse":
        assert ours["n_prototype_vectors"] == 70 * 9 and "stages_s_median" in rows[0]


def test_inversion_quick(tmp_path, capsys):
    # K = 1 keeps it to one compile (both paths invert one image with the same shapes).
    rows = _run(tmp_path, capsys, ["inversion", "--quick", "--batch", "1", "--steps", "1", "--repeats", "1"])
    assert rows[1]["k_images"] == 1 and rows[1]["image_steps_per_s"] > 0
    assert rows[1]["final_loss_max_rel_diff_vs_original"] < 1e-4  # same keys: the same trajectory


@pytest.mark.slow
def test_train_step_quick(tmp_path, capsys):
    rows = _run(tmp_path, capsys, ["train-step", "--quick", "--repeats", "1"])
    assert rows[1]["batch"] == 2 and rows[1]["encoder"] == "tiny"


def test_bad_options_exit_2(capsys):
    assert bench.main(["labeling", "--batch", "1,x"]) == 2
    assert "error: --batch" in capsys.readouterr().err
    assert bench.main(["train-step", "--dtype", "bfloat16"]) == 2
    assert "float32 only" in capsys.readouterr().err
