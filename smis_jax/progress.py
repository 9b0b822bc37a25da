"""A dependency-free progress bar for long loops (tqdm-like).

    for batch in progress(batches, total=len(batches), desc="synthesize"):
        ...

On a terminal it redraws one line on stderr (at most every ``min_interval`` seconds); when stderr is not a
terminal (logs, nohup, cluster jobs, pipes) it prints a plain line (count, rate, status) every ``log_interval``
seconds (default ``$SMIS_PROGRESS_SECONDS`` or 30) and one final summary line. ``bar.postfix = "loss 0.12"``
adds a short status; ``update(n)`` advances by hand when iterating is not the unit.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

__all__ = ["Progress", "progress"]

T = TypeVar("T")


def default_log_interval() -> float:
    """Seconds between plain progress lines off a terminal: ``$SMIS_PROGRESS_SECONDS``, else 30."""
    return float(os.environ.get("SMIS_PROGRESS_SECONDS", 30))


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Counts ``n`` of ``total`` (None = unknown) and renders ``desc: 45%|####      | 9/20 [00:03<00:04, 2.5it/s]``."""

    def __init__(self, iterable: Iterable[T] | None = None, total: int | None = None, desc: str = "",
                 file: TextIO | None = None, width: int = 24, min_interval: float = 0.1, unit: str = "it",
                 log_interval: float | None = None):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.width, self.unit = iterable, total, desc, width, unit
        self.file = file if file is not None else sys.stderr
        self.min_interval = min_interval
        self.log_interval = default_log_interval() if log_interval is None else log_interval
        self.interactive = bool(getattr(self.file, "isatty", lambda: False)())
        self.n = 0
        self.postfix = ""
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_line = self.start
        self._closed = False

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("Progress without an iterable: use update()")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self.interactive and (now - self._last_draw >= self.min_interval or self.n == self.total):
            self._last_draw = now
            self.file.write("\r" + self.render(now) + "\x1b[K")
            self.file.flush()
        elif not self.interactive and now - self._last_line >= self.log_interval:
            self._last_line = now
            self.file.write(self.render(now, plain=True) + "\n")
            self.file.flush()

    def render(self, now: float | None = None, plain: bool = False) -> str:
        """The bar line; ``plain``: without the bar (a line for a log file)."""
        elapsed = (now if now is not None else time.perf_counter()) - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        tail = f", {self.postfix}" if self.postfix else ""
        if self.total:
            frac = min(self.n / self.total, 1.0)
            filled = int(frac * self.width)
            bar = "" if plain else "|" + "#" * filled + " " * (self.width - filled) + "|"
            eta = (self.total - self.n) / rate if rate > 0 else 0.0
            return (f"{head}{frac * 100:3.0f}%{bar} {self.n}/{self.total} "
                    f"[{_fmt_time(elapsed)}<{_fmt_time(eta)}, {rate:.2f}{self.unit}/s{tail}]")
        return f"{head}{self.n}{self.unit} [{_fmt_time(elapsed)}, {rate:.2f}{self.unit}/s{tail}]"

    def close(self) -> None:
        """Finish the line (terminal) or print the one summary line (not a terminal). Idempotent."""
        if self._closed:
            return
        self._closed = True
        now = time.perf_counter()
        if self.interactive:
            self.file.write("\r" + self.render(now) + "\x1b[K\n")
        else:
            elapsed = now - self.start
            total = f"/{self.total}" if self.total else ""
            tail = f", {self.postfix}" if self.postfix else ""
            head = f"{self.desc}: " if self.desc else ""
            self.file.write(f"{head}{self.n}{total} {self.unit} in {elapsed:.1f}s "
                            f"({self.n / elapsed if elapsed > 0 else 0.0:.2f} {self.unit}/s{tail})\n")
        self.file.flush()


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", **kwargs) -> Progress:
    """Wrap an iterable in a :class:`Progress` (iterate it as the iterable itself)."""
    return Progress(iterable, total=total, desc=desc, **kwargs)
