"""Recorded GPU telemetry: the samples (clocks, utilization, power, clocks-event reasons, GPM),
their per-phase aggregates, JSON/CSV, and the clock warnings for the report.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pytest_kts.errors import KtsError

# Column name -> unit, in the order they are stored and written.
METRICS: dict[str, str] = {
    "sm_clock_mhz": "MHz",
    "mem_clock_mhz": "MHz",
    "gpu_util_pct": "%",
    "mem_util_pct": "%",
    "power_w": "W",
    "gpm_sm_util_pct": "%",  # GPM (Hopper+): share of SMs busy
    "gpm_sm_occupancy_pct": "%",  # GPM: active warps / theoretical
    "gpm_dram_bw_util_pct": "%",  # GPM: DRAM bandwidth used / peak
}

# NVML clocks-event (formerly "throttle") reason bits; the same values under both names.
REASONS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal": 0x20,
    "hw_thermal": 0x40,
    "hw_power_brake": 0x80,
    "display_clock": 0x100,
}

# GPM metric ids (nvmlGpmMetricId_t): stable across driver versions.
GPM_METRICS: dict[str, int] = {
    "gpm_sm_util_pct": 2,
    "gpm_sm_occupancy_pct": 3,
    "gpm_dram_bw_util_pct": 10,
}

# A median SM clock that differs by more than this between solo and shared is worth a warning.
CLOCK_WARN_FRACTION = 0.10
# A non-idle clocks-event reason active this much more in one phase than the other is too.
REASON_WARN_FRACTION = 0.10

_NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED
_UNKNOWN_REASONS = -1


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.strip()


class TelemetryUnavailable(KtsError):
    """NVML cannot be used here (no nvidia-ml-py, no driver, no such GPU)."""


class WindowLike(Protocol):
    """What :class:`pytest_kts.results.PhaseWindow` provides; any such object will do."""

    @property
    def phase(self) -> str: ...
    @property
    def round(self) -> int: ...
    @property
    def started_ns(self) -> int: ...
    @property
    def ended_ns(self) -> int: ...


# --------------------------------------------------------------------------------------------
# Recorded telemetry and its aggregates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseTelemetry:
    """What the GPU did during one phase window (or all windows of a phase: ``round`` None)."""

    phase: str
    round: int | None
    samples: int
    seconds: float
    sm_clock_mean_mhz: float
    sm_clock_median_mhz: float
    sm_clock_min_mhz: float
    sm_clock_max_mhz: float
    mem_clock_mean_mhz: float
    gpu_util_mean: float
    mem_util_mean: float
    power_mean_w: float
    gpm_sm_util_mean: float
    gpm_sm_occupancy_mean: float
    gpm_dram_bw_util_mean: float
    # Fraction of samples (with known reasons) in which each clocks-event reason was active.
    reasons: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in asdict(self).items()}


@dataclass(eq=False)  # numpy columns have no truth value to compare by
class Telemetry:
    """NVML samples as columns; ``time_ns`` is epoch nanoseconds (``time.time_ns``)."""

    time_ns: np.ndarray  # int64
    columns: dict[str, np.ndarray]  # METRICS name -> float64, nan where unsupported/failed
    reasons: np.ndarray  # int64 bit mask, -1 where unknown
    device: dict[str, Any] = field(default_factory=dict)  # index, name, uuid
    errors: dict[str, str] = field(default_factory=dict)  # metric -> why it is nan
    interval_s: float = 0.05

    def __post_init__(self) -> None:
        n = self.time_ns.shape[0]
        for name in METRICS:
            self.columns.setdefault(name, np.full(n, np.nan))

    def __len__(self) -> int:
        return int(self.time_ns.shape[0])

    def column(self, name: str) -> np.ndarray:
        return self.columns[name]

    def has(self, name: str) -> bool:
        values = self.columns.get(name)
        return values is not None and bool(np.isfinite(values).any())

    # -- aggregates ------------------------------------------------------------------------

    def _mask(self, started_ns: int, ended_ns: int) -> np.ndarray:
        return (self.time_ns >= started_ns) & (self.time_ns <= ended_ns)

    def _aggregate(
        self, phase: str, rnd: int | None, mask: np.ndarray, seconds: float
    ) -> PhaseTelemetry:
        col = {name: values[mask] for name, values in self.columns.items()}
        sm = col["sm_clock_mhz"]
        return PhaseTelemetry(
            phase=phase,
            round=rnd,
            samples=int(mask.sum()),
            seconds=seconds,
            sm_clock_mean_mhz=_nanstat(np.nanmean, sm),
            sm_clock_median_mhz=_nanstat(np.nanmedian, sm),
            sm_clock_min_mhz=_nanstat(np.nanmin, sm),
            sm_clock_max_mhz=_nanstat(np.nanmax, sm),
            mem_clock_mean_mhz=_nanstat(np.nanmean, col["mem_clock_mhz"]),
            gpu_util_mean=_nanstat(np.nanmean, col["gpu_util_pct"]),
            mem_util_mean=_nanstat(np.nanmean, col["mem_util_pct"]),
            power_mean_w=_nanstat(np.nanmean, col["power_w"]),
            gpm_sm_util_mean=_nanstat(np.nanmean, col["gpm_sm_util_pct"]),
            gpm_sm_occupancy_mean=_nanstat(np.nanmean, col["gpm_sm_occupancy_pct"]),
            gpm_dram_bw_util_mean=_nanstat(np.nanmean, col["gpm_dram_bw_util_pct"]),
            reasons=_reason_fractions(self.reasons[mask]),
        )

    def summarize(self, windows: Sequence[WindowLike]) -> dict[tuple[str, int], PhaseTelemetry]:
        """One aggregate per phase window, keyed ``(phase, round)``.

        Several windows with the same key (solo phases of different tenants in one round)
        are pooled into one aggregate.
        """
        keyed: dict[tuple[str, int], list[WindowLike]] = {}
        for w in windows:
            keyed.setdefault((w.phase, int(w.round)), []).append(w)
        return {
            key: self._aggregate(key[0], key[1], self._union(ws), _seconds(ws))
            for key, ws in keyed.items()
        }

    def by_phase(self, windows: Sequence[WindowLike]) -> dict[str, PhaseTelemetry]:
        """One aggregate per phase (``solo``, ``shared``) over all its rounds."""
        out: dict[str, PhaseTelemetry] = {}
        for phase in ("solo", "shared"):
            ws = [w for w in windows if w.phase == phase]
            if ws:
                out[phase] = self._aggregate(phase, None, self._union(ws), _seconds(ws))
        return out

    def _union(self, windows: Iterable[WindowLike]) -> np.ndarray:
        mask = np.zeros(len(self), dtype=bool)
        for w in windows:
            mask |= self._mask(int(w.started_ns), int(w.ended_ns))
        return mask

    def join(
        self,
        start_ns: np.ndarray,
        column: str = "sm_clock_mhz",
        max_gap_s: float | None = None,
    ) -> np.ndarray:
        """The value of ``column`` nearest in time to each iteration start (nan if none near).

        ``max_gap_s`` (default: four sampling intervals, at least 0.25 s) keeps iterations
        outside the sampled span from borrowing a value from another time.
        """
        starts = np.asarray(start_ns, dtype=np.int64)
        out = np.full(starts.shape, np.nan)
        if len(self) == 0 or starts.size == 0:
            return out
        gap_ns = int((max_gap_s if max_gap_s is not None else max(4 * self.interval_s, 0.25)) * 1e9)
        order = np.argsort(self.time_ns, kind="stable")
        times = self.time_ns[order]
        values = self.columns[column][order]
        right = np.clip(np.searchsorted(times, starts), 0, len(times) - 1)
        left = np.clip(right - 1, 0, len(times) - 1)
        pick = np.where(np.abs(times[left] - starts) <= np.abs(times[right] - starts), left, right)
        near = np.abs(times[pick] - starts) <= gap_ns
        out[near] = values[pick[near]]
        return out

    # -- warnings ----------------------------------------------------------------------------

    def clock_warnings(self, windows: Sequence[WindowLike]) -> list[str]:
        """Plain-language warnings when solo and shared phases ran the GPU differently."""
        phases = self.by_phase(windows)
        solo, shared = phases.get("solo"), phases.get("shared")
        if solo is None or shared is None:
            return []
        warnings = [
            f"{p.phase} phases: {_no_samples_hint(self)}" for p in (solo, shared) if p.samples == 0
        ]
        if warnings:
            return warnings
        warnings += _clock_warning(solo, shared)
        warnings += _reason_warnings(solo, shared)
        return warnings

    # -- persistence -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "interval_s": self.interval_s,
            "device": self.device,
            "errors": self.errors,
            "units": METRICS,
            "time_ns": [int(t) for t in self.time_ns],
            "reasons": [int(r) for r in self.reasons],
            "columns": {k: [_json_number(x) for x in v] for k, v in self.columns.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Telemetry:
        return cls(
            time_ns=np.asarray(data["time_ns"], dtype=np.int64),
            columns={
                k: np.array([math.nan if x is None else x for x in v], dtype=np.float64)
                for k, v in data.get("columns", {}).items()
            },
            reasons=np.asarray(data.get("reasons", []), dtype=np.int64),
            device=dict(data.get("device", {})),
            errors=dict(data.get("errors", {})),
            interval_s=float(data.get("interval_s", 0.05)),
        )

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["time_ns", *METRICS, "clocks_event_reasons"])
        for k in range(len(self)):
            row = [_csv_value(self.columns[name][k]) for name in METRICS]
            reason = int(self.reasons[k])
            writer.writerow([int(self.time_ns[k]), *row, "" if reason < 0 else f"0x{reason:x}"])
        return out.getvalue()

    @classmethod
    def from_csv(cls, text: str) -> Telemetry:
        rows = list(csv.DictReader(io.StringIO(text)))
        return cls(
            time_ns=np.array([int(r["time_ns"]) for r in rows], dtype=np.int64),
            columns={
                name: np.array([float(r[name]) if r.get(name) else math.nan for r in rows])
                for name in METRICS
            },
            reasons=np.array(
                [
                    int(r["clocks_event_reasons"], 16) if r.get("clocks_event_reasons") else -1
                    for r in rows
                ],
                dtype=np.int64,
            ),
        )

    def save(self, path: Path) -> Path:
        """Write as ``.json`` (everything) or ``.csv`` (the samples only), by suffix."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".csv":
            path.write_text(self.to_csv())
        else:
            path.write_text(json.dumps(self.to_json(), separators=(",", ":")))
        return path

    @classmethod
    def load(cls, path: Path) -> Telemetry:
        path = Path(path)
        text = path.read_text()
        return cls.from_csv(text) if path.suffix == ".csv" else cls.from_json(json.loads(text))


def _seconds(windows: Iterable[WindowLike]) -> float:
    return sum(max(0, int(w.ended_ns) - int(w.started_ns)) for w in windows) / 1e9


def _nanstat(fn: Callable[[np.ndarray], Any], values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(fn(finite)) if finite.size else math.nan


def _reason_fractions(masks: np.ndarray) -> dict[str, float]:
    known = masks[masks >= 0]
    if known.size == 0:
        return {}
    return {name: float(np.mean((known & bit) != 0)) for name, bit in REASONS.items()}


def _json_number(x: Any) -> Any:
    if isinstance(x, float | np.floating) and not math.isfinite(float(x)):
        return None
    if isinstance(x, np.floating):
        return float(x)
    return x


def _csv_value(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.6g}"


def _no_samples_hint(t: Telemetry) -> str:
    if len(t) == 0:
        return "no telemetry samples were recorded"
    return "no telemetry sample fell inside these windows (phases shorter than the interval?)"


def _clock_warning(solo: PhaseTelemetry, shared: PhaseTelemetry) -> list[str]:
    a, b = solo.sm_clock_median_mhz, shared.sm_clock_median_mhz
    if not (math.isfinite(a) and math.isfinite(b)) or max(a, b) <= 0:
        return []
    if abs(a - b) / max(a, b) <= CLOCK_WARN_FRACTION:
        return []
    if a < b:
        # Slower solo iterations inflate the solo p99, the denominator.
        effect = (
            "the solo baseline is slowed by lower clocks, so DF is understated "
            "(co-location looks cheaper than it is)"
        )
    else:
        effect = (
            "the shared phase ran at lower clocks, so DF is overstated "
            "(part of the slowdown is clocks, not contention)"
        )
    message = (
        f"solo phases ran at a median SM clock of {a:.0f} MHz and shared at {b:.0f} MHz: {effect}"
    )
    idle = solo.reasons.get("gpu_idle", 0.0)
    if a < b and idle > 0:
        message += (
            f"; NVML reported the GpuIdle clocks-event reason {idle:.0%} of solo time "
            "(sleeps between iterations let the GPU idle down: shorten sleep_ms or add a "
            "warm-up load)"
        )
    return [message]


def _reason_warnings(solo: PhaseTelemetry, shared: PhaseTelemetry) -> list[str]:
    out = []
    for name in REASONS:
        if name == "gpu_idle":
            continue  # covered by the clock warning; idle is expected between iterations
        a, b = solo.reasons.get(name, 0.0), shared.reasons.get(name, 0.0)
        if max(a, b) >= REASON_WARN_FRACTION and abs(a - b) >= REASON_WARN_FRACTION:
            out.append(
                f"clocks-event reason {name} was active {a:.0%} of solo time and {b:.0%} of "
                "shared time: the phases did not run under the same power/thermal conditions"
            )
    return out
