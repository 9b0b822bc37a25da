"""The torch-free checkpoint reader against torch.load, both on-disk formats, and its refusals."""

import argparse
import os

import numpy as np
import pytest
import torch

from smis_jax.io import torchfile


def _assert_same(ours, theirs, where=""):
    if isinstance(theirs, dict):
        assert set(ours) == set(theirs), where
        for k in theirs:
            _assert_same(ours[k], theirs[k], f"{where}/{k}")
    elif isinstance(theirs, torch.Tensor):
        ref = theirs.detach().float().numpy() if theirs.dtype == torch.bfloat16 else theirs.detach().numpy()
        got = ours.astype(np.float32) if theirs.dtype == torch.bfloat16 else ours
        assert got.shape == ref.shape and got.dtype == ref.dtype, where
        np.testing.assert_array_equal(got, ref, err_msg=where)
    elif isinstance(theirs, argparse.Namespace):
        assert dict(ours) == vars(theirs), where
    else:
        assert ours == theirs, where


@pytest.mark.parametrize(
    "name", ["stylegan2_tiny128.pt", "psp_tiny_celebamask.pt", "lpips_alex_alexnet.pth", "lpips_v0.1_alex_lin.pth"]
)
def test_golden_files_match_torch_load(golden, name):
    # lpips_v0.1_alex_lin.pth is in torch's legacy (pre-zip) format with storages on cuda:0.
    _assert_same(torchfile.load(golden / name), torch.load(golden / name, map_location="cpu", weights_only=True))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_views_parameters_dtypes_and_namespace(tmp_path, legacy):
    base = torch.arange(24.0).reshape(2, 3, 4)
    obj = {
        "transposed": base.transpose(0, 2),  # non-contiguous strides
        "slice": base[1],  # storage offset into a shared storage
        "param": torch.nn.Parameter(torch.randn(3, 2)),
        "scalar": torch.tensor(5),
        "bf16": torch.randn(4).to(torch.bfloat16),
        "half": torch.randn(2, 2).half(),
        "args": argparse.Namespace(size=256, lr=0.002),
        "nested": {"list": [1, 2.5, "x"], "none": None},
    }
    path = tmp_path / "f.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    loaded = torchfile.load(path)
    _assert_same(loaded, {**obj, "param": obj["param"].detach()})
    assert loaded["args"].size == 256


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_refuses_arbitrary_globals(tmp_path, legacy):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(torchfile.TorchFileError, match=r"evil\.pt: refusing to unpickle posix\.system"):
        torchfile.load(path)


def test_bad_files_fail_with_one_line(tmp_path, golden):
    data = (golden / "stylegan2_tiny128.pt").read_bytes()
    cases = {
        "truncated.pt": data[: len(data) // 2],
        "text.pt": b"not a checkpoint at all",
        "empty.pt": b"",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(torchfile.TorchFileError) as info:
            torchfile.load(tmp_path / name)
        msg = str(info.value)
        assert name in msg and "\n" not in msg, msg
    with pytest.raises(torchfile.TorchFileError, match="no such file"):
        torchfile.load(tmp_path / "missing.pt")
