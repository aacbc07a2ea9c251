"""A status line while a scenario runs: current phase, samples so far, current DF estimate.

A scenario can run for many minutes (the original study: ~6 minutes of GPU per scenario), and a
silent terminal looks hung. The runner calls a :class:`Progress`; it knows nothing about the
run except what it is told.

* On a terminal: one status line, rewritten in place (``\\r``), at most every ``refresh_s``.
* Not on a terminal (CI logs): plain lines, one per phase and then at most every
  ``every_s`` seconds, so a log shows progress without a line per sample.
* ``verbosity < 0`` (pytest ``-q``): nothing at all.

The output is a pytest ``TerminalWriter`` or any text stream.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class _Stream(Protocol):
    def write(self, text: str, /) -> Any: ...
    def flush(self) -> Any: ...


def _is_tty(out: Any) -> bool:
    # A TerminalWriter keeps its file in ``_file``; a plain stream answers isatty() itself.
    target = getattr(out, "_file", out)
    isatty = getattr(target, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed or odd stream
        return False


def _fmt_df(value: float, ci: Sequence[float] | None) -> str:
    if not math.isfinite(value):
        return "n/a"
    text = f"{value:.2f}"
    if ci is not None and len(ci) == 2 and all(math.isfinite(c) for c in ci):
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return text


class Progress:
    """Progress callbacks for :func:`pytest_kts.runner.run_scenario`.

    ``Progress(terminalwriter_or_stream, verbosity, label="scenario name")``. Calls may come
    from several threads (one reader per tenant); they are serialised here.
    """

    def __init__(
        self,
        out: Any,
        verbosity: int = 0,
        *,
        label: str = "",
        refresh_s: float = 0.2,
        every_s: float = 15.0,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out = out
        self.verbosity = verbosity
        self.label = label
        self.refresh_s = refresh_s
        self.every_s = every_s
        self.tty = _is_tty(out) if tty is None else tty
        self._clock = clock
        self._lock = threading.Lock()
        self._phase = ""
        self._round = 0
        self._tenants: tuple[str, ...] = ()
        self._counts: dict[str, int] = {}
        self._estimates: dict[str, str] = {}
        self._last_write = -math.inf
        self._status_width = 0  # characters of the status line now on screen
        self._started = False
        self._return_col: int | None = None  # pytest's column to return to (TTY only)

    @property
    def silent(self) -> bool:
        return self.verbosity < 0

    # -- the runner's calls ------------------------------------------------------------------

    def phase_started(self, phase: str, round: int, tenants: Sequence[str]) -> None:
        with self._lock:
            self._phase, self._round, self._tenants = phase, round, tuple(tenants)
            self._counts = {t: 0 for t in self._tenants}
            if self.tty:
                self._show(force=True)
            else:
                self._line(f"{self._where()}: {', '.join(self._tenants)}")

    def samples(self, tenant: str, phase: str, n: int) -> None:
        """``n``: samples of ``tenant`` in the current phase so far."""
        with self._lock:
            if phase == self._phase:
                self._counts[tenant] = n
            self._tick()

    def estimate(self, tenant: str, df_value: float, ci: Sequence[float] | None = None) -> None:
        """The current DF estimate for ``tenant`` (with its confidence interval, if known)."""
        with self._lock:
            self._estimates[tenant] = _fmt_df(float(df_value), ci)
            if self.verbosity > 0 and not self.tty:
                self._line(f"{self._prefix()}DF {tenant} {self._estimates[tenant]}")
            else:
                self._tick()

    def note(self, text: str) -> None:
        """A line of its own, shown under ``-q`` too (only ``-qq`` hides it): why nothing is
        happening, e.g. a lock another session holds, which can last for hours."""
        with self._lock:
            if self.verbosity < -1:
                return
            if self.tty and self._status_width:
                self._raw("\r" + " " * self._status_width + "\r")
                self._status_width = 0
            self._last_write = self._clock()
            self._begin()
            self._raw(f"{self._prefix()}{text}\n")

    def finished(self) -> None:
        """Clear the status line (the caller prints its table next) and reset for the next run."""
        with self._lock:
            if self.tty and self._status_width and not self.silent:
                self._raw("\r" + " " * self._status_width + "\r")
                if self._return_col is not None:
                    # Back up to the end of pytest's line, so its "." or PASSED lands there.
                    forward = f"\x1b[{self._return_col}C" if self._return_col else ""
                    self._raw("\x1b[1A" + forward)
            self._status_width = 0
            self._return_col = None
            self._phase, self._tenants, self._counts, self._estimates = "", (), {}, {}
            self._last_write = -math.inf
            self._started = False

    # -- rendering ---------------------------------------------------------------------------

    def _prefix(self) -> str:
        return f"kts {self.label}: " if self.label else "kts: "

    def _where(self) -> str:
        return f"{self._prefix()}{self._phase} round {self._round}"

    def status(self) -> str:
        """The status text as it would be shown now."""
        parts = [self._where()]
        if self._counts:
            parts.append(" ".join(f"{t} {n}" for t, n in self._counts.items()) + " samples")
        if self._estimates:
            parts.append("DF " + ", ".join(f"{t} {e}" for t, e in self._estimates.items()))
        return " | ".join(parts)

    def _tick(self) -> None:
        if self.tty:
            self._show(force=False)
        elif self._clock() - self._last_write >= self.every_s:
            self._line(self.status())

    def _show(self, *, force: bool) -> None:
        if self.silent or not self._phase:
            return
        now = self._clock()
        if not force and now - self._last_write < self.refresh_s:
            return
        self._last_write = now
        text = self._fit(self.status())
        pad = max(0, self._status_width - len(text))
        self._begin()
        self._raw("\r" + text + " " * pad)
        self._status_width = len(text)

    def _fit(self, text: str) -> str:
        width = getattr(self.out, "fullwidth", 0) or 0
        return text if width <= 1 or len(text) < width else text[: width - 2] + "…"

    def _line(self, text: str) -> None:
        if self.silent:
            return
        self._last_write = self._clock()
        self._begin()
        self._raw(text + "\n")

    def _begin(self) -> None:
        """Start on a fresh line: pytest may be half-way through ``test_x.py::test_y ``."""
        if self._started:
            return
        self._started = True
        column = getattr(self.out, "width_of_current_line", 0)
        if not column:
            return
        if self.tty:
            # The status line goes below pytest's; finished() returns the cursor to this column.
            self._return_col = column
            self._raw("\n")
        else:
            self.out.write("\n")  # a log cannot go back up: pytest continues on a new line

    def _raw(self, text: str) -> None:
        # write_raw keeps a TerminalWriter's idea of the current line untouched, so pytest's
        # own "[ 50%]" alignment is not thrown off by our carriage returns.
        writer = getattr(self.out, "write_raw", None)
        if writer is not None:
            writer(text, flush=True)
            return
        self.out.write(text)
        flush = getattr(self.out, "flush", None)
        if callable(flush):
            flush()
