"""Ctrl-C that always ends a run in seconds, with one line and exit status 130.

Python turns SIGINT into KeyboardInterrupt only when the main thread next runs Python code; a long compile or a
compiled chunk keeps it away, and letting the interpreter shut down normally afterwards can crash in XLA's and
orbax's threads (a segfault printed after the message). So:

- ``exit_now(130, message)`` flushes the output and leaves with ``os._exit``, skipping that shutdown; the CLIs call
  it from their ``except KeyboardInterrupt`` (after the training loop's ``finally`` has finished a checkpoint save
  already under way; checkpoints are written to a temporary folder and renamed, so one cut short is never used).
- ``install_watchdog(message)`` starts a thread that sees SIGINT at once (``signal.set_wakeup_fd``) and, if the
  main thread has not exited ``grace`` seconds later, does ``exit_now`` itself.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

__all__ = ["INTERRUPTED", "exit_now", "install_watchdog"]

INTERRUPTED = 130  # the shell's status for a process ended by SIGINT


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


def install_watchdog(message: str, grace: float = 5.0) -> None:
    """After a SIGINT, give the main thread ``grace`` seconds to exit cleanly, then ``exit_now(130, message)``.

    The Python SIGINT handler stays as it is (KeyboardInterrupt in the main thread). Only from the main thread.
    """
    if getattr(install_watchdog, "_sockets", None) is not None:
        return  # one watchdog per process (a CLI's main may run more than once in a test process)
    read_end, write_end = socket.socketpair()
    write_end.setblocking(False)
    signal.set_wakeup_fd(write_end.fileno(), warn_on_full_buffer=False)

    def watch():
        while True:
            try:
                data = read_end.recv(64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGINT in data:
                time.sleep(grace)
                exit_now(INTERRUPTED, message)

    threading.Thread(target=watch, name="sigint-watchdog", daemon=True).start()
    install_watchdog._sockets = (read_end, write_end)  # keep both ends open for the life of the process
