"""Ctrl-C that always ends a run in seconds, with one line and exit status 130.

Python's own SIGINT handling raises KeyboardInterrupt wherever the main thread happens to be; raised inside a
garbage-collection callback (jax registers one) it is printed as "Exception ignored" and lost, and the run goes
on. It is also held back while the main thread is inside a compile or a compiled chunk, and letting the interpreter
shut down normally afterwards can crash in XLA's and orbax's threads (a segfault after the message). So, inside
``handled(message)``:

- SIGINT only sets a flag; long loops call :func:`check` at safe points (after each training step and each
  inversion chunk), which raises KeyboardInterrupt there;
- a watchdog thread sees the signal at once (``signal.set_wakeup_fd``) and, if the process is still alive ``grace``
  seconds later (the main thread stuck in a compile, or in code that does not call ``check``), ends it with
  :func:`exit_now`;
- the CLI's ``except KeyboardInterrupt`` calls ``exit_now(130, message)``: flush, one line, ``os._exit``, skipping
  the interpreter shutdown. Checkpoints are written to a temporary folder and renamed, so a save cut short is
  never used.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time

__all__ = ["INTERRUPTED", "check", "exit_now", "handled"]

INTERRUPTED = 130  # the shell's status for a process ended by SIGINT

_requested = threading.Event()  # SIGINT arrived (set by the Python-level handler)
_active = threading.Event()  # inside handled(): the watchdog may end the process
_message = ["interrupted"]
_watchdog: list[socket.socket] = []  # the socket pair, created once per process


def check() -> None:
    """Raise KeyboardInterrupt if SIGINT arrived inside :func:`handled` (call it at safe points of long loops)."""
    if _requested.is_set():
        raise KeyboardInterrupt


def exit_now(code: int, message: str) -> None:
    """Write ``message`` as one line on stderr, flush stdout and stderr, and end the process without the
    interpreter's shutdown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        os.write(2, (message.rstrip("\n") + "\n").encode())
    except OSError:
        pass
    os._exit(code)


def _on_sigint(signum, frame) -> None:
    _requested.set()


def _watch(read_end: socket.socket, grace: float) -> None:
    while True:
        try:
            data = read_end.recv(64)
        except OSError:
            return
        if not data:
            return
        # The byte arrives at once, even while the main thread is inside a compile (the Python handler runs later).
        if signal.SIGINT in data and _active.is_set():
            time.sleep(grace)
            if _active.is_set():
                exit_now(INTERRUPTED, _message[0])


@contextlib.contextmanager
def handled(message: str, grace: float = 5.0):
    """SIGINT handling for a CLI's work (main thread only; elsewhere a no-op): see the module docstring. The previous
    handler is restored on leaving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not _watchdog:
        read_end, write_end = socket.socketpair()
        write_end.setblocking(False)
        _watchdog.extend((read_end, write_end))
        threading.Thread(target=_watch, args=(read_end, grace), name="sigint-watchdog", daemon=True).start()
    _message[0] = message
    _requested.clear()
    _active.set()
    previous = signal.signal(signal.SIGINT, _on_sigint)
    previous_fd = signal.set_wakeup_fd(_watchdog[1].fileno(), warn_on_full_buffer=False)
    try:
        yield
    finally:
        _active.clear()
        signal.signal(signal.SIGINT, previous)
        signal.set_wakeup_fd(previous_fd)
        _requested.clear()
