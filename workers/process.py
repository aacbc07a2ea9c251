"""What a worker process settles before any workload code runs: where its protocol lines go,
and the environment knobs it reads.

Protocol lines travel on a descriptor of their own. :func:`protocol_stream` takes the
process's standard output for them and points file descriptor 1 (and so ``sys.stdout``,
``print`` and a C library's ``printf``) at standard error. A workload's own output, a
framework's warning or a line that imitates ours (``KTS_APP,v2,another-tenant,...``, a forged
``KTS_EVENT ... error``) then lands in the worker's stderr, which the backend keeps for error
messages and never parses: only the harness can write a sample or an event.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TextIO

CPU_THREADS = "KTS_CPU_THREADS"
# More intra-op threads than this on one tenant is a typo, not a setting.
MAX_CPU_THREADS = 1024


def protocol_stream() -> TextIO:
    """The stream for protocol lines: the process's original standard output.

    From here on, anything else that writes to standard output (Python or native code) writes
    to standard error. The descriptor is not inherited by the workload's own subprocesses.
    """
    sys.stdout.flush()
    fd = os.dup(1)  # non-inheritable (PEP 446)
    os.dup2(2, 1)
    return os.fdopen(fd, "w", encoding="utf-8", errors="replace", newline="\n")


def cpu_threads(environ: Mapping[str, str] | None = None) -> int:
    """torch's intra-op threads on the CPU: ``KTS_CPU_THREADS`` (default 1), checked.

    Raises ValueError naming the variable; the test side calls this before anything spawns.
    """
    env = os.environ if environ is None else environ
    raw = env.get(CPU_THREADS, "").strip()
    if not raw:
        return 1
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_CPU_THREADS:
        raise ValueError(
            f"{CPU_THREADS}={raw!r} is not a thread count: set it to an integer from 1 to "
            f"{MAX_CPU_THREADS}, or unset it for 1"
        )
    return value
