"""The one line protocol between a worker and whoever collects its output.

Every line a worker prints is written by :func:`format_sample`, :func:`format_meta` or
:func:`format_event` and read back by :class:`LineReader`; nothing else in the project
knows the format. The module imports only the standard library so that it runs inside a
bare worker container.

Formats
-------
``KTS_APP,v1,{TENANT},{i},{epoch_ns_start},{epoch_ns_end},{latency_ms_device},{phase}``
    The original study's line, read unchanged. The phase is optional: usually empty (a
    trailing comma), sometimes left out with its comma; such a sample carries the phase
    ``""`` (:data:`UNPHASED`) and whoever reads the file assigns it (``kts report`` takes it
    from the file name or its options). The study stamps ``epoch_ns_start = time.time_ns()``
    just before its start event and ``epoch_ns_end`` after ``torch.cuda.synchronize()``, so
    the host latency is ``end - start``: launch to observed completion. A line whose epoch
    stamps run backwards (``time.time_ns()`` stepped back, e.g. an NTP step) is counted as
    malformed *and* as ``backwards``. Without its phase field a line must end in a latency
    with six decimals (the study's ``:.6f``), so a line cut inside that number is caught.

``KTS_APP,v2,{tenant},{phase},{round},{i},{start_ns},{end_ns},{host_ms},{device_ms}``
    One iteration. ``start_ns`` is the epoch time the iteration was due to start (the
    intended start: the launch in a closed loop, the scheduled arrival in an open loop),
    ``end_ns`` the epoch time its completion was observed. ``host_ms`` is the latency the
    caller lives with (``end - start`` on a monotonic clock), ``device_ms`` the CUDA event
    time, or ``-`` where there is no device clock (the CPU). Latencies have exactly six
    decimals and the last field is never empty, so a line cut short never parses.

``KTS_META,v2,{tenant},{json object}``
    Facts about the run, once: device kind, GPU name and UUID, torch version, pid.

``KTS_EVENT,v2,{tenant},{name},{json object}``
    Control events: ``ready``, ``phase_start``, ``target_reached``, ``phase_end``, ``error``.

Lines that do not start with ``KTS_`` are *foreign* (a framework's warning, a stray print);
lines that start with ``KTS_`` but do not parse are *malformed*. Both are counted and a few
kept as examples; neither is ever fatal.

A backend reads each worker's stream with a reader *bound* to what that worker runs
(:meth:`LineReader.bound`): its tenant, and for a one-phase stream (a Kubernetes Job) the phase
and round. A record that names anything else is *misaddressed*: counted, a few kept as
examples, never kept as a record. So no stream can add to another tenant's samples, set its
facts or raise its error, whatever the line says. (The worker also keeps its workload's own
output off the protocol stream: ``pytest_kts.workers.process``.)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PREFIX = "KTS_"
SAMPLE_V1 = "KTS_APP,v1,"
SAMPLE_V2 = "KTS_APP,v2,"
META_V2 = "KTS_META,v2,"
EVENT_V2 = "KTS_EVENT,v2,"

PHASES = ("solo", "shared")
# A v1 sample whose line left the phase empty or out: the reader of the file assigns it.
UNPHASED = ""
# Longest line read whole: anything longer is counted as malformed and never held in memory.
MAX_LINE_BYTES = 64 * 1024
# An absent clock is written as a dash, never as an empty field, so that no cut line can pass
# for a complete one.
ABSENT = "-"
# Tenant names travel in a comma-separated line and in Kubernetes object names.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_EXAMPLES_KEPT = 5
# Every integer field is stored as int64 (numpy columns); a larger one is malformed, not a crash.
MAX_INT = 2**63 - 1
# A latency above this (about 11.6 days) is no iteration's: malformed, not a figure to plot.
MAX_MS = 1e9


class ProtocolError(ValueError):
    """A line that claims to be ours (``KTS_`` prefix) but is not well formed."""


class ClockWentBackwards(ProtocolError):
    """A sample whose end stamp is before its start stamp: the wall clock stepped back."""


def check_tenant_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"tenant name {name!r} is not allowed: use 1-63 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class Sample:
    """One iteration of one tenant."""

    tenant: str
    phase: str
    round: int
    iteration: int
    start_ns: int
    end_ns: int
    host_ms: float  # nan where unknown
    device_ms: float  # nan where there is no device clock (CPU)


@dataclass(frozen=True, slots=True)
class Meta:
    tenant: str
    facts: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Event:
    tenant: str
    name: str
    data: dict[str, Any]


Record = Sample | Meta | Event


def _fmt_ms(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ABSENT
    return f"{x:.6f}"


def format_sample(s: Sample) -> str:
    return (
        f"{SAMPLE_V2}{s.tenant},{s.phase},{s.round},{s.iteration},{s.start_ns},{s.end_ns},"
        f"{_fmt_ms(s.host_ms)},{_fmt_ms(s.device_ms)}"
    )


def format_meta(tenant: str, facts: dict[str, Any]) -> str:
    return f"{META_V2}{tenant},{json.dumps(facts, sort_keys=True, separators=(',', ':'))}"


def format_event(tenant: str, name: str, data: dict[str, Any] | None = None) -> str:
    payload = json.dumps(data or {}, sort_keys=True, separators=(",", ":"))
    return f"{EVENT_V2}{tenant},{name},{payload}"


def _int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ProtocolError(f"{what} is not an integer: {text!r}") from None
    if value < 0:
        raise ProtocolError(f"{what} is negative: {value}")
    if value > MAX_INT:
        raise ProtocolError(f"{what} does not fit in 64 bits: {text[:30]}...")
    return value


# v2 writes every latency with exactly six decimals, so a line cut short inside its last
# number is caught instead of read as a smaller latency.
_MS_V2 = re.compile(r"^\d+\.\d{6}$")


def _ms(text: str, what: str, *, optional: bool, strict: bool = False) -> float:
    if strict:
        if text == ABSENT and optional:
            return math.nan
        if not _MS_V2.match(text):
            raise ProtocolError(f"{what} must have six decimals or be '-' (a cut line?): {text!r}")
    if text == "":
        if optional:
            return math.nan
        raise ProtocolError(f"{what} is empty")
    try:
        value = float(text)
    except ValueError:
        raise ProtocolError(f"{what} is not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ProtocolError(f"{what} is not a finite non-negative number: {text!r}")
    if value > MAX_MS:
        raise ProtocolError(f"{what} is above {MAX_MS:g} ms, no iteration's latency: {text[:30]!r}")
    return value


def _span_ms(start_ns: int, end_ns: int) -> float:
    ms = (end_ns - start_ns) / 1e6
    if ms > MAX_MS:
        raise ProtocolError(f"the epoch stamps span {ms:.3g} ms, above {MAX_MS:g} ms")
    return ms


def _phase(text: str) -> str:
    phase = text.strip().lower()
    if phase not in PHASES:
        raise ProtocolError(f"phase must be one of {PHASES}, got {text!r}")
    return phase


def _tenant(text: str) -> str:
    if not _NAME.fullmatch(text):
        raise ProtocolError(f"bad tenant name {text!r}")
    return text


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"payload is not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ProtocolError("payload is not a JSON object")
    return value


# The common case, a well-formed v2 sample as the harness writes it, in one match; anything
# else (and any doubt) goes the long way, which also says what is wrong.
_V2_FAST = re.compile(
    r"KTS_APP,v2,([A-Za-z0-9][A-Za-z0-9_.-]{0,62}),(solo|shared),(\d+),(\d+),(\d+),(\d+),"
    r"(\d+\.\d{6}),(\d+\.\d{6}|-)"
)


def parse_line(line: str) -> Record | None:
    """Parse one line. ``None`` for a foreign line; :class:`ProtocolError` for a bad one of ours."""
    line = line.strip().lstrip("\ufeff")
    fast = _V2_FAST.fullmatch(line)
    if fast is not None:
        tenant, phase, rnd, i, start, end, host, device = fast.groups()
        start_ns, end_ns = int(start), int(end)
        # Anything out of range goes the long way below, which names the field.
        if (
            end_ns >= start_ns
            and end_ns <= MAX_INT
            and len(rnd) < 19
            and len(i) < 19
            and float(host) <= MAX_MS
            and (device == ABSENT or float(device) <= MAX_MS)
        ):
            return Sample(
                tenant,
                phase,
                int(rnd),
                int(i),
                start_ns,
                end_ns,
                float(host),
                math.nan if device == ABSENT else float(device),
            )
    # Tolerate a log prefix (kubectl --timestamps, a logging formatter) before our marker.
    at = line.find(PREFIX)
    if at < 0:
        return None
    line = line[at:]
    if line.startswith(SAMPLE_V2):
        parts = line[len(SAMPLE_V2) :].split(",")
        if len(parts) != 8:
            raise ProtocolError(f"v2 sample has {len(parts)} fields after the version, expected 8")
        tenant, phase, rnd, i, start, end, host, device = parts
        start_ns, end_ns = _int(start, "start_ns"), _int(end, "end_ns")
        if end_ns < start_ns:
            raise ClockWentBackwards("end_ns is before start_ns")
        return Sample(
            tenant=_tenant(tenant),
            phase=_phase(phase),
            round=_int(rnd, "round"),
            iteration=_int(i, "iteration"),
            start_ns=start_ns,
            end_ns=end_ns,
            host_ms=_ms(host, "host_ms", optional=False, strict=True),
            device_ms=_ms(device, "device_ms", optional=True, strict=True),
        )
    if line.startswith(SAMPLE_V1):
        parts = line[len(SAMPLE_V1) :].split(",")
        if len(parts) == 5:  # the optional phase left out together with its comma
            parts.append(UNPHASED)
            cut_guard = True
        elif len(parts) == 6:
            cut_guard = False
        else:
            raise ProtocolError(
                f"v1 sample has {len(parts)} fields after the version, expected 5 or 6"
            )
        tenant, i, start, end, device, phase = parts
        start_ns, end_ns = _int(start, "epoch_ns_start"), _int(end, "epoch_ns_end")
        if end_ns < start_ns:
            raise ClockWentBackwards("epoch_ns_end is before epoch_ns_start (the clock went back)")
        if cut_guard and not _MS_V2.match(device):
            raise ProtocolError(
                f"v1 line without a phase must end in a six-decimal latency (a cut line?): "
                f"{device!r}"
            )
        return Sample(
            tenant=_tenant(tenant.lower()),
            phase=_phase(phase) if phase.strip() else UNPHASED,
            round=0,
            iteration=_int(i, "iteration"),
            start_ns=start_ns,
            end_ns=end_ns,
            # Launch to observed completion on the study's own clock (see the module doc).
            host_ms=_span_ms(start_ns, end_ns),
            device_ms=_ms(device, "latency_ms_device", optional=False),
        )
    if line.startswith(META_V2):
        tenant, sep, payload = line[len(META_V2) :].partition(",")
        if not sep:
            raise ProtocolError("meta line has no payload")
        return Meta(_tenant(tenant), _json_object(payload))
    if line.startswith(EVENT_V2):
        tenant, sep, rest = line[len(EVENT_V2) :].partition(",")
        name, sep2, payload = rest.partition(",")
        if not sep or not sep2:
            raise ProtocolError("event line needs tenant, name and payload")
        if not re.fullmatch(r"[a-z_]{1,32}", name):
            raise ProtocolError(f"bad event name {name!r}")
        return Event(_tenant(tenant), name, _json_object(payload))
    raise ProtocolError(f"unknown record type or version: {line[:40]!r}")


@dataclass
class LineReader:
    """Accumulates records from a stream of lines and accounts for every line it was given."""

    samples: list[Sample] = field(default_factory=list)
    metas: list[Meta] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    lines: int = 0
    foreign: int = 0
    malformed: int = 0
    backwards: int = 0  # of the malformed: samples whose clock went backwards
    oversized: int = 0  # of the malformed: lines over MAX_LINE_BYTES, never held whole
    v1: int = 0  # of the samples: lines in the original study's format
    malformed_examples: list[str] = field(default_factory=list)
    foreign_examples: list[str] = field(default_factory=list)
    # What the stream may speak for (None: anything, as a saved log of several tenants).
    tenant: str | None = None
    phase: str | None = None
    round: int | None = None
    misaddressed: int = 0  # records naming another tenant, phase or round: never kept
    misaddressed_to: dict[str, int] = field(default_factory=dict)  # tenant named -> lines
    misaddressed_examples: list[str] = field(default_factory=list)

    @classmethod
    def bound(cls, tenant: str, phase: str | None = None, round: int | None = None) -> LineReader:
        """A reader for one worker's stream: records of ``tenant`` only (and of ``phase`` and
        ``round`` where given); anything else is counted as misaddressed."""
        return cls(tenant=tenant, phase=phase, round=round)

    def _addressed(self, record: Record, line: str) -> bool:
        wrong = ""
        if self.tenant is not None and record.tenant != self.tenant:
            wrong = f"names tenant {record.tenant!r} on the stream of {self.tenant!r}"
        elif isinstance(record, Sample) and (
            (self.phase is not None and record.phase != self.phase)
            or (self.round is not None and record.round != self.round)
        ):
            expected = (
                f"{self.phase or 'any'} phase, round {'any' if self.round is None else self.round}"
            )
            wrong = (
                f"a {record.phase} sample of round {record.round} on the stream of the {expected}"
            )
        if not wrong:
            return True
        self.misaddressed += 1
        self.misaddressed_to[record.tenant] = self.misaddressed_to.get(record.tenant, 0) + 1
        if len(self.misaddressed_examples) < _EXAMPLES_KEPT:
            self.misaddressed_examples.append(f"{line.strip()[:200]!r}: {wrong}")
        return False

    def feed(self, line: str) -> Record | None:
        self.lines += 1
        try:
            record = parse_line(line)
        except ProtocolError as exc:
            self.malformed += 1
            self.backwards += isinstance(exc, ClockWentBackwards)
            if len(self.malformed_examples) < _EXAMPLES_KEPT:
                self.malformed_examples.append(f"{line.strip()[:200]!r}: {exc}")
            return None
        if record is None:
            if line.strip():
                self.foreign += 1
                if len(self.foreign_examples) < _EXAMPLES_KEPT:
                    self.foreign_examples.append(line.strip()[:200])
            return None
        if not self._addressed(record, line):
            return None
        if isinstance(record, Sample):
            self.samples.append(record)
            self.v1 += SAMPLE_V1 in line
        elif isinstance(record, Meta):
            self.metas.append(record)
        else:
            self.events.append(record)
        return record

    def feed_oversized(self, head: str) -> None:
        """Account for a line longer than :data:`MAX_LINE_BYTES`, given only its start."""
        self.lines += 1
        self.malformed += 1
        self.oversized += 1
        if len(self.malformed_examples) < _EXAMPLES_KEPT:
            self.malformed_examples.append(
                f"{head.strip()[:60]!r}...: line longer than {MAX_LINE_BYTES} bytes"
            )

    def feed_all(self, lines: Iterable[str]) -> LineReader:
        for line in lines:
            self.feed(line)
        return self

    def merge(self, other: LineReader) -> None:
        self.samples += other.samples
        self.metas += other.metas
        self.events += other.events
        self.lines += other.lines
        self.foreign += other.foreign
        self.malformed += other.malformed
        self.backwards += other.backwards
        self.oversized += other.oversized
        self.v1 += other.v1
        self.misaddressed += other.misaddressed
        for name, n in other.misaddressed_to.items():
            self.misaddressed_to[name] = self.misaddressed_to.get(name, 0) + n
        for mine, theirs in (
            (self.malformed_examples, other.malformed_examples),
            (self.foreign_examples, other.foreign_examples),
            (self.misaddressed_examples, other.misaddressed_examples),
        ):
            mine += theirs[: max(_EXAMPLES_KEPT - len(mine), 0)]

    def accounting(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "samples": len(self.samples),
            "foreign": self.foreign,
            "malformed": self.malformed,
            "backwards": self.backwards,
            "oversized": self.oversized,
            "malformed_examples": list(self.malformed_examples),
            "misaddressed": self.misaddressed,
            "misaddressed_to": dict(self.misaddressed_to),
            "misaddressed_examples": list(self.misaddressed_examples),
        }
