"""SIGTERM ends a run the way Ctrl-C does: an exception raised into the session, then cleanup.

CI cancels a job, ``timeout`` ends a command and pytest-timeout's thread method ends a test
with SIGTERM, whose default action kills the process on the spot: worker processes, temp files
and Kubernetes Jobs are left behind. :func:`install` (the plugin does it for the session, the
``kts`` command for its run) turns the first SIGTERM into :class:`Terminated`, a
``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` / ``finally`` cleanup path runs.
A second SIGTERM, while that cleanup runs, kills as the default action would.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM; raised into the main thread so that cleanup runs."""


MESSAGE = "pytest-kts: terminated by SIGTERM; stopping the workers and cleaning up"
_received: list[bool] = []  # a SIGTERM came (process-wide, as signals are)


def terminated() -> bool:
    """Whether this process was sent SIGTERM while the handler was installed."""
    return bool(_received)


def install() -> Callable[[], None]:
    """Handle SIGTERM until the returned function is called (it restores the previous handler).

    Does nothing (and returns a no-op) off the main thread, or when SIGTERM already has a
    handler or is ignored: someone else decided what it means.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return lambda: None
    received = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        if received:  # a second one: cleanup is taking too long for whoever sends them
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        received = True
        _received.append(True)
        raise Terminated(MESSAGE)

    signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)

    return restore


__all__ = ["MESSAGE", "Terminated", "install", "terminated"]
