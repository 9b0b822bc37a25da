"""TensorBoard event files beside a run's ``metrics.jsonl``: its scalars, the preview grids and the configuration.

``metrics.jsonl`` stays the record of truth; :class:`EventLog` repeats what a run writes there in the format
TensorBoard reads (``tensorboard --logdir runs/``), with tensorboardX's event-file writer (protobuf, no TensorFlow
or PyTorch). Each start of a run (a fresh run or a ``--resume``) opens a new ``events.out.tfevents.*`` file in the
run folder; TensorBoard reads them in order as one stream.

A resumed run continues the stream without writing a step twice: before it writes anything, the events that the
stopped run logged after the checkpoint it resumes from are removed from the earlier files (as ``metrics.jsonl``
loses those lines), and a session start at the first new step tells TensorBoard the same. Only the writer process
(``hosts.is_writer``) writes; on the others an EventLog does nothing.

:func:`read_events` reads the files back (CRCs checked; a torn last record of a killed run is where a file ends).
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct
import sys
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from smis_jax import hosts

__all__ = ["EventLog", "Event", "scalars_of", "read_events", "event_files", "forget_after", "CONFIG_TAG"]

CONFIG_TAG = "config"  # the resolved configuration, as text (TensorBoard's TEXT tab), at each start's first step
_opened = [0]


@functools.lru_cache(maxsize=1)
def _tensorboardx():
    """tensorboardX's (event writer, summaries, protos, crc32c). tensorboardX imports torch when it is installed
    (for torch tensors we never pass): where torch is not loaded yet, it is hidden for the import (4 s and a second
    runtime in the training process otherwise; 0.3 s with it hidden)."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
    try:
        from tensorboardX import summary
        from tensorboardX.crc32c import crc32c
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto import event_pb2
    finally:
        if hide:
            del sys.modules["torch"]
    return EventsWriter, summary, event_pb2, crc32c


def scalars_of(record: dict[str, Any]) -> dict[str, float]:
    """The scalars a ``metrics.jsonl`` record gives TensorBoard: every number except ``step``, nested dicts
    flattened with ``/`` (``{"eval/per_class": {"sky": 0.9}}`` -> ``eval/per_class/sky``); lists, strings and
    booleans are left out. Tags keep TensorBoard's characters (letters, digits, ``_ . - /``; others become ``_``)."""
    out: dict[str, float] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                visit(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
            out[re.sub(r"[^-/\w.]", "_", prefix)] = float(value)

    visit("", {k: v for k, v in record.items() if k != "step"})
    return out


class Event(NamedTuple):
    """One value read back: ``kind`` is "scalar" (value: float), "image" (value: PNG bytes), "text" (value: str)
    or "session_start" (tag ""; TensorBoard forgets the run's events at or after ``step`` seen before it)."""

    step: int
    tag: str
    kind: str
    value: Any
    wall_time: float


class EventLog:
    """A run's TensorBoard events, written into ``logdir`` (the run folder) by the writer process.

    ``resume_step``: the checkpoint step a resumed run continues from; events after it are removed from the
    earlier files first (see the module docstring). ``enabled``: default ``hosts.is_writer()``."""

    def __init__(self, logdir: str | os.PathLike, resume_step: int | None = None, enabled: bool | None = None):
        self.logdir = Path(logdir)
        self.enabled = hosts.is_writer() if enabled is None else enabled
        self._writer = None
        if not self.enabled:
            return
        EventsWriter, self._summary, self._pb, _ = _tensorboardx()
        self.logdir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            forget_after(self.logdir, resume_step)
        _opened[0] += 1  # two starts in one second of one process still get two files
        # zero-padded: TensorBoard reads a folder's files in name order, and ".10" sorts before ".9"
        self._writer = EventsWriter(str(self.logdir / "events"), f".{os.getpid()}.{_opened[0]:06d}")
        if resume_step is not None:
            self._add(resume_step + 1, session_log=self._pb.SessionLog(status=self._pb.SessionLog.START))

    def _add(self, step: int, **fields) -> None:
        self._writer.write_event(self._pb.Event(wall_time=time.time(), step=int(step), **fields))

    def record(self, record: dict[str, Any]) -> None:
        """A ``metrics.jsonl`` record: its scalars (:func:`scalars_of`) at its ``step``."""
        if self._writer is None:
            return
        step = int(record["step"])
        for tag, value in scalars_of(record).items():
            self._add(step, summary=self._summary.scalar(tag, value))
        self.flush()  # on disk right after its (line-buffered) metrics.jsonl line, as a killed run leaves them

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        """A uint8 (H, W, 3) image (stored as PNG)."""
        if self._writer is None:
            return
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"EventLog.image takes a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        self._add(step, summary=self._summary.image(tag, image, dataformats="HWC"))
        self.flush()

    def text(self, tag: str, step: int, text: str) -> None:
        """Markdown text (TensorBoard's TEXT tab)."""
        if self._writer is None:
            return
        self._add(step, summary=self._summary.text(tag, text))
        self.flush()

    def config(self, step: int, record: dict[str, Any]) -> None:
        """The resolved configuration (a JSON-able dict) as text under :data:`CONFIG_TAG`, shown as code."""
        body = json.dumps(record, indent=1, default=str)
        self.text(CONFIG_TAG, step, "\n".join("    " + line for line in body.splitlines()))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# --- reading (and trimming) event files: TFRecord framing, each record an Event protobuf -------------------------

def _masked_crc(data: bytes) -> int:
    crc = _tensorboardx()[3](data)  # pure Python unless the `crc32c` package is installed: ~0.6 s per MB here
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(path: Path) -> Iterator[bytes]:
    """The intact records of a TFRecord file, in order; stops at the first torn or corrupt one."""
    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        end = pos + 12 + length + 4
        if length_crc != _masked_crc(header) or end > len(data):
            return
        body = data[pos + 12:pos + 12 + length]
        if struct.unpack("<I", data[end - 4:end])[0] != _masked_crc(body):
            return
        yield body
        pos = end


def _frame(body: bytes) -> bytes:
    header = struct.pack("<Q", len(body))
    return header + struct.pack("<I", _masked_crc(header)) + body + struct.pack("<I", _masked_crc(body))


def event_files(logdir: str | os.PathLike) -> list[Path]:
    """The event files directly in ``logdir``, oldest first (by their first event's time, then name)."""
    pb = _tensorboardx()[2]

    def started(path: Path) -> float:
        for body in _records(path):
            return pb.Event.FromString(body).wall_time
        return float("inf")

    return sorted(Path(logdir).glob("events.out.tfevents.*"), key=lambda p: (started(p), p.name))


def _decode(pb, body: bytes) -> list[Event]:
    ev = pb.Event.FromString(body)
    if ev.HasField("session_log"):
        if ev.session_log.status == pb.SessionLog.START:
            return [Event(ev.step, "", "session_start", None, ev.wall_time)]
        return []
    out = []
    for v in ev.summary.value:
        if v.HasField("image"):
            out.append(Event(ev.step, v.tag, "image", v.image.encoded_image_string, ev.wall_time))
        elif v.HasField("simple_value"):
            out.append(Event(ev.step, v.tag, "scalar", float(v.simple_value), ev.wall_time))
        elif v.metadata.plugin_data.plugin_name == "text":
            tag = v.tag.removesuffix("/text_summary")
            out.append(Event(ev.step, tag, "text", v.tensor.string_val[0].decode("utf-8"), ev.wall_time))
    return out


def read_events(logdir: str | os.PathLike) -> list[Event]:
    """Every scalar, image, text and session start of the event files in ``logdir``, in the order written."""
    pb = _tensorboardx()[2]
    return [e for f in event_files(logdir) for body in _records(f) for e in _decode(pb, body)]


def forget_after(logdir: str | os.PathLike, step: int) -> int:
    """Remove from the event files in ``logdir`` every event after ``step``, and the configuration text at
    ``step`` (a resumed run writes its own there); each file changed is rewritten atomically. Returns how many
    events went."""
    pb = _tensorboardx()[2]
    dropped = 0
    for path in event_files(logdir):
        bodies = list(_records(path))
        keep = []
        for body in bodies:
            ev = pb.Event.FromString(body)
            config = ev.step == step and any(v.tag == f"{CONFIG_TAG}/text_summary" for v in ev.summary.value)
            if ev.step <= step and not config or ev.HasField("file_version"):
                keep.append(body)
        torn = path.stat().st_size != sum(len(b) + 16 for b in bodies)
        if len(keep) != len(bodies) or torn:
            tmp = path.with_name(".tmp-" + path.name)  # not an event file if left behind
            tmp.write_bytes(b"".join(_frame(b) for b in keep))
            os.replace(tmp, path)
            dropped += len(bodies) - len(keep)
    return dropped
