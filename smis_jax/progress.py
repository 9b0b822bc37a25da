"""Progress bars: tqdm on a terminal, plain lines at a steady interval everywhere else.

    for batch in progress(batches, desc="synthesize", unit="batch"):
        ...

On a terminal this is tqdm's bar. Off a terminal (logs, nohup, cluster jobs, pipes) the animated bar is disabled:
the same tqdm object writes one plain line (``desc:  45% 9/20 [00:03<00:04, 2.50it/s, loss 0.12]``) every
``log_interval`` seconds (default ``$SMIS_PROGRESS_SECONDS`` or 30) and one final line when it closes. ``bar.postfix
= "loss 0.12"`` (or tqdm's ``set_postfix_str``) adds a short status; ``update(n)`` advances by hand.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, TextIO

from tqdm import tqdm

__all__ = ["Progress", "progress", "default_log_interval"]


def default_log_interval() -> float:
    """Seconds between plain progress lines off a terminal: ``$SMIS_PROGRESS_SECONDS``, else 30."""
    return float(os.environ.get("SMIS_PROGRESS_SECONDS", 30))


class _Lines:
    """A file for tqdm off a terminal: each redraw (``"\\r" + line + padding``) becomes one line of its own."""

    def __init__(self, file: TextIO):
        self.file = file

    def write(self, text: str) -> None:
        line = text.lstrip("\r").rstrip()
        if line:
            self.file.write(line + "\n")

    def flush(self) -> None:
        self.file.flush()

    def __getattr__(self, name):
        return getattr(self.file, name)


class Progress(tqdm):
    """:class:`tqdm.tqdm`; when ``file`` (default stderr) is not a terminal, plain lines every ``log_interval`` s."""

    monitor_interval = 0  # no monitor thread: lines come from update() only, at the interval asked for

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 file: TextIO | None = None, unit: str = "it", log_interval: float | None = None, **kwargs):
        file = sys.stderr if file is None else file
        self.interactive = bool(getattr(file, "isatty", lambda: False)())
        if not self.interactive:
            interval = default_log_interval() if log_interval is None else log_interval
            head = "{desc}: " if desc else ""
            counts = ("{percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                      if total is not None or hasattr(iterable, "__len__") else "{n_fmt}{unit} [{elapsed}, ")
            kwargs.update(file=_Lines(file), bar_format=head + counts + "{rate_plain}{unit}/s{postfix}]",
                          mininterval=interval, miniters=1, delay=max(interval, 1e-9), ascii=True)
        else:
            kwargs.update(file=file, dynamic_ncols=True)
        super().__init__(iterable, total=total, desc=desc, unit=unit, **kwargs)

    @property
    def format_dict(self):
        """tqdm's fields plus ``rate_plain``: the rate as ``2.50`` (tqdm's own pads it and flips to s/it below 1)."""
        d = super().format_dict
        rate = d["rate"] or (d["n"] / d["elapsed"] if d["elapsed"] else None)
        d["rate_plain"] = f"{rate:.2f}" if rate else "?"
        return d

    def close(self) -> None:
        if not self.interactive and not self.disable:
            if self.n == self.last_print_n and self.last_print_t >= self.start_t + self.delay:
                self.leave = False  # the last line written already says where it stopped
            self.delay = 0  # off a terminal the final line is written even for a run shorter than the interval
        super().close()


def progress(iterable: Iterable, total: int | None = None, desc: str = "", **kwargs) -> Progress:
    """Wrap an iterable in a :class:`Progress` (iterate it as the iterable itself)."""
    return Progress(iterable, total=total, desc=desc, **kwargs)
