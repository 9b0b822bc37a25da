"""Read PyTorch ``.pt``/``.pth`` checkpoints into numpy without torch and without running pickled code.

``torch.save`` writes either a zip archive (``<name>/data.pkl`` plus one raw file per storage) or, before
torch 1.6 and with ``_use_new_zipfile_serialization=False``, the legacy stream (magic number, protocol,
system info, the object pickle, the storage keys, then each storage as an int64 element count followed by
its bytes). Both pickles only *reference* tensors; this module rebuilds them as numpy arrays.

The unpickler (``safepickle.RestrictedUnpickler``) resolves a fixed allow-list of globals (ordered dicts, tensor
and parameter rebuilders, storage types, ``argparse.Namespace``); anything else raises :class:`TorchFileError`
naming the global, so a malicious or exotic file is refused instead of executed. :data:`TENSOR_GLOBALS` and
:func:`load_bytes` also serve pickles that embed tensors (NVIDIA's network pickles, ``smis_jax.io.nvidiafile``).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from smis_jax.errors import UserError
from smis_jax.io.safepickle import RestrictedUnpickler

__all__ = ["TorchFileError", "Namespace", "load", "load_bytes", "TENSOR_GLOBALS"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchFileError(UserError, ValueError):
    """The file is not a PyTorch checkpoint this reader accepts; the message says why in one line."""


class Namespace(dict):
    """Stand-in for ``argparse.Namespace`` (rosinality training checkpoints pickle their ``args``)."""

    def __setstate__(self, state):
        self.update(state or {})

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *_unused):
    flat = storage  # 1-D numpy array over the whole storage
    if len(size) == 0:
        return np.array(flat[offset])
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, *_unused):
    return data


_TENSOR_REBUILDERS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")}

# What a pickled torch tensor or nn.Parameter calls (the storage comes from a persistent id or, in a plain
# pickle, from torch.storage._load_from_bytes).
TENSOR_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}

_ALLOWED = {
    **TENSOR_GLOBALS,
    ("argparse", "Namespace"): Namespace,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}
_DEFERRED = {**_ALLOWED, **{key: (lambda *args: _Deferred(args)) for key in _TENSOR_REBUILDERS}}
_REFUSAL = "only tensors, dicts and argparse.Namespace are allowed"


def _unpickler(file, load_storage, defer_tensors=False) -> RestrictedUnpickler:
    def persistent_load(pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchFileError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"unsupported storage type {storage_type!r}")
        view_metadata = pid[5] if len(pid) > 5 else None
        flat = load_storage(str(key), storage_type.dtype, int(numel))
        if view_metadata is not None:  # legacy storage views: (view_key, offset, size)
            _, off, size = view_metadata
            flat = flat[off : off + size]
        return flat

    return RestrictedUnpickler(file, _DEFERRED if defer_tensors else _ALLOWED, error=TorchFileError,
                               refusal=_REFUSAL, persistent_load=persistent_load)


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise TorchFileError(f"{path}: zip archive without a single data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        cache: dict[str, np.ndarray] = {}

        def load_storage(key, dtype, numel):
            if key not in cache:
                raw = archive.read(f"{prefix}data/{key}")
                cache[key] = np.frombuffer(raw, dtype=dtype, count=numel).copy()
            return cache[key]

        return _unpickler(io.BytesIO(archive.read(pkl[0])), load_storage).load()


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        return _load_legacy_stream(f, path)


def _load_legacy_stream(f, path: str) -> Any:
    def header():  # the header pickles hold only ints, dicts and lists; one unpickler each, as torch does
        return RestrictedUnpickler(f, {}, error=TorchFileError, refusal="a checkpoint header holds only numbers").load()

    if header() != _LEGACY_MAGIC:
        raise TorchFileError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    if header() != 1001:
        raise TorchFileError(f"{path}: unsupported legacy protocol")
    sys_info = header()
    if not sys_info.get("little_endian", True):
        raise TorchFileError(f"{path}: big-endian checkpoints are not supported")

    pending: dict[str, tuple[np.dtype, int, np.ndarray | None]] = {}

    def load_storage(key, dtype, numel):
        # The bytes come after the object pickle, so hand out a buffer now and fill it below.
        if key not in pending:
            pending[key] = (dtype, numel, np.empty(numel, dtype=dtype))
        return pending[key][2]

    # Tensors are rebuilt lazily: record them, then materialise after the storages are read.
    result = _unpickler(f, load_storage, defer_tensors=True).load()
    keys = header()
    for key in keys:
        (count,) = struct.unpack("<q", f.read(8))
        dtype, numel, buf = pending[str(key)]
        if count != numel:
            raise TorchFileError(f"{path}: storage {key} holds {count} elements, expected {numel}")
        data = f.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise TorchFileError(f"{path}: truncated storage {key}")
        buf[...] = np.frombuffer(data, dtype=dtype)
    return _materialise(result)


def load_bytes(data: bytes, source: str = "embedded storage") -> Any:
    """What ``torch.storage._load_from_bytes`` returns, as numpy: a ``torch.save`` stream held in a pickle
    (plain pickles of tensors embed each storage so, in the legacy format). A storage comes back as its flat
    1-D array."""
    if not isinstance(data, (bytes, bytearray)):
        raise TorchFileError(f"{source}: expected the bytes of a torch.save stream, got {type(data).__name__}")
    stream = io.BytesIO(data)
    if zipfile.is_zipfile(stream):
        raise TorchFileError(f"{source}: a zip-format torch.save stream inside a pickle is not supported")
    stream.seek(0)
    return _load_legacy_stream(stream, source)


class _Deferred:
    def __init__(self, args):
        self.args = args


def _materialise(obj):
    if isinstance(obj, _Deferred):
        return _rebuild_tensor(*obj.args)
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _materialise(v)
        return obj
    if isinstance(obj, list):
        return [_materialise(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v) for v in obj)
    return obj


def load(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` file as nested dicts of numpy arrays (NCHW/OIHW layouts, as saved).

    Raises :class:`TorchFileError` with a one-line reason for anything that is not a readable checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TorchFileError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        if head.startswith(b"PK"):
            raise TorchFileError(f"{path}: truncated or corrupt zip archive (an incomplete download?)")
        return _load_legacy(path)
    except TorchFileError as e:
        msg = str(e)
        raise TorchFileError(msg if msg.startswith(path) else f"{path}: {msg}") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, struct.error, ValueError,
            IndexError, TypeError, AttributeError) as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise TorchFileError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
