"""GPU telemetry while tenants run: clocks, utilization, power, clocks-event reasons, GPM.

Why it exists: a solo baseline measured while the GPU idles between iterations runs at idle
clocks (345 MHz on our H100 against 1980 MHz under load), so the solo p99 is inflated and the
degradation factor understated. The only way to tell is to record what the GPU was doing
during each phase and to say so in the report (:meth:`Telemetry.clock_warnings`).

:class:`TelemetrySampler` polls NVML (``nvidia-ml-py``, imported lazily: it is an optional
dependency) in a background thread of the process that runs the tenants; it never touches
the workers. Every metric is read on its own: one that the GPU does not support, or that
fails once, becomes ``nan`` for that sample and never stops the others. Timestamps are
``time.time_ns()``, the epoch clock the workers stamp ``start_ns``/``end_ns`` with, so the
telemetry can be matched to phase windows and to single iterations.

:func:`fetch_dcgm` is the cluster counterpart: it asks a Prometheus that scrapes
dcgm-exporter for the profiling fields over each phase window.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
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


# --------------------------------------------------------------------------------------------
# NVML sampling
# --------------------------------------------------------------------------------------------


def _import_pynvml() -> ModuleType | None:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    return pynvml


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.strip()


def _is_not_supported(nvml: ModuleType, exc: BaseException) -> bool:
    value = getattr(exc, "value", None)
    return value == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", _NOT_SUPPORTED)


class _Gpm:
    """Hopper GPM: metrics are averages between two samples, so keep the previous one."""

    def __init__(self, nvml: ModuleType, handle: Any, min_interval_s: float) -> None:
        self.nvml = nvml
        self.handle = handle
        self.min_interval_s = min_interval_s
        self.samples = [nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()]
        nvml.nvmlGpmSampleGet(handle, self.samples[0])
        self.taken_at = time.monotonic()

    def read(self) -> dict[str, float] | None:
        """Metric values since the previous sample, or None while too little time has passed.

        Short windows give noisy ratios; NVIDIA's examples space GPM samples 100 ms or more.
        """
        now = time.monotonic()
        if now - self.taken_at < self.min_interval_s:
            return None
        nvml = self.nvml
        previous, current = self.samples
        nvml.nvmlGpmSampleGet(self.handle, current)
        self.samples = [current, previous]
        self.taken_at = now
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(GPM_METRICS)
        request.sample1 = previous
        request.sample2 = current
        for k, metric_id in enumerate(GPM_METRICS.values()):
            request.metrics[k].metricId = metric_id
        nvml.nvmlGpmMetricsGet(request)
        success = getattr(nvml, "NVML_SUCCESS", 0)
        return {
            name: float(request.metrics[k].value)
            if request.metrics[k].nvmlReturn == success
            else math.nan
            for k, name in enumerate(GPM_METRICS)
        }

    def close(self) -> None:
        for sample in self.samples:
            with contextlib.suppress(Exception):  # freeing must not mask the result
                self.nvml.nvmlGpmSampleFree(sample)


class TelemetrySampler:
    """Polls one GPU through NVML in a background thread.

    ``sampler = TelemetrySampler(0); sampler.start(); ...; telemetry = sampler.stop()``.
    ``uuid`` (a worker's ``gpu_uuid``) picks the GPU by UUID instead of by index: NVML numbers
    GPUs in PCI order, CUDA by default fastest first, so an index can name another GPU.
    """

    def __init__(
        self,
        device_index: int = 0,
        interval_s: float = 0.05,
        *,
        uuid: str | None = None,
        gpm: bool = True,
        gpm_interval_s: float = 0.1,
    ) -> None:
        if not 0 < interval_s <= 0.1:
            # Phases of a few seconds need many samples; 10 Hz is the slowest that resolves them.
            raise ValueError(f"interval_s must be in (0, 0.1], got {interval_s}")
        self.device_index = device_index
        self.interval_s = interval_s
        self.uuid = uuid
        self.use_gpm = gpm
        self.gpm_interval_s = gpm_interval_s
        self._nvml: ModuleType | None = None
        self._handle: Any = None
        self._gpm: _Gpm | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._rows: list[tuple[int, list[float], int]] = []
        self._closed = False
        self._lock = threading.Lock()  # the thread and sample_now() share the NVML state
        self._errors: dict[str, str] = {}
        self._disabled: set[str] = set()
        self._reason_fns: list[str] = []
        self._device: dict[str, Any] = {}
        self._result: Telemetry | None = None

    # -- availability --------------------------------------------------------------------------

    @staticmethod
    def unavailable_reason(device_index: int = 0) -> str | None:
        """Why NVML telemetry cannot run here, or None when it can."""
        nvml = _import_pynvml()
        if nvml is None:
            return "nvidia-ml-py is not installed (pip install 'pytest-kts[nvml]')"
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            return f"NVML could not start ({_describe(exc)}): no NVIDIA driver on this machine?"
        try:
            count = int(nvml.nvmlDeviceGetCount())
            if count == 0:
                return "NVML sees no GPU"
            if not 0 <= device_index < count:
                return f"NVML sees {count} GPU(s); there is no index {device_index}"
        except Exception as exc:
            return f"NVML could not list GPUs ({_describe(exc)})"
        finally:
            _shutdown(nvml)
        return None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> TelemetrySampler:
        """Open NVML and start sampling; raises :class:`TelemetryUnavailable` if it cannot."""
        if self._thread is not None:
            raise RuntimeError("TelemetrySampler already started")
        nvml = _import_pynvml()
        if nvml is None:
            raise TelemetryUnavailable(self.unavailable_reason(self.device_index) or "no pynvml")
        try:
            nvml.nvmlInit()
        except Exception as exc:
            raise TelemetryUnavailable(f"NVML could not start: {_describe(exc)}") from None
        try:
            if self.uuid:
                self._handle = nvml.nvmlDeviceGetHandleByUUID(self.uuid)
            else:
                self._handle = nvml.nvmlDeviceGetHandleByIndex(self.device_index)
        except Exception as exc:
            _shutdown(nvml)
            which = f"UUID {self.uuid}" if self.uuid else f"index {self.device_index}"
            raise TelemetryUnavailable(f"NVML has no GPU with {which}: {_describe(exc)}") from None
        self._nvml = nvml
        self._device = self._describe_device()
        self._gpm = self._open_gpm() if self.use_gpm else None
        self._stop.clear()
        self._sample_once()  # one sample at once, so a stop() right after still has data
        self._thread = threading.Thread(target=self._loop, name="kts-telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Telemetry:
        """Stop sampling and return everything recorded. Safe to call more than once."""
        if self._result is not None:
            return self._result
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._lock:
            self._close()
        self._result = self._build()
        return self._result

    def _close(self) -> None:
        self._closed = True
        if self._gpm is not None:
            self._gpm.close()
        if self._nvml is not None:
            _shutdown(self._nvml)

    def __enter__(self) -> TelemetrySampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- sampling --------------------------------------------------------------------------

    def _loop(self) -> None:
        next_at = time.monotonic() + self.interval_s
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            self._sample_once()
            next_at += self.interval_s
            now = time.monotonic()
            if next_at < now:
                next_at = now + self.interval_s  # fell behind (slow NVML): do not burst

    def sample_now(self) -> None:
        """Take one sample at once (at a phase boundary, say), besides the periodic ones."""
        if self._nvml is None or self._result is not None:
            raise RuntimeError("TelemetrySampler is not running")
        self._sample_once()

    def _sample_once(self) -> None:
        with self._lock:
            if self._closed:
                return  # a thread that outlived stop()'s join must not call a closed NVML
            stamp = time.time_ns()
            values = dict(self._read_nvml())
            values.update(self._read_gpm())
            row = [values.get(name, math.nan) for name in METRICS]
            self._rows.append((stamp, row, self._read_reasons()))

    def _read_nvml(self) -> Iterable[tuple[str, float]]:
        """The plain NVML metrics, each read on its own so that one failure stays local."""
        nvml, h = self._nvml, self._handle
        assert nvml is not None
        yield (
            "sm_clock_mhz",
            self._read("sm_clock_mhz", nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_SM),
        )
        yield (
            "mem_clock_mhz",
            self._read("mem_clock_mhz", nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_MEM),
        )
        # One call answers both; it is the driver's average over its own period (1/6 s to 1 s).
        rates = self._call("utilization", nvml.nvmlDeviceGetUtilizationRates, h)
        yield "gpu_util_pct", math.nan if rates is None else float(rates.gpu)
        yield "mem_util_pct", math.nan if rates is None else float(rates.memory)
        milliwatts = self._read("power_w", nvml.nvmlDeviceGetPowerUsage, h)
        yield "power_w", milliwatts / 1000.0

    def _read(self, name: str, fn: Callable[..., Any], *args: Any) -> float:
        value = self._call(name, fn, *args)
        return math.nan if value is None else float(value)

    def _call(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        if name in self._disabled:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # one metric failing never stops the others
            self._note_error(name, exc)
            return None

    def _note_error(self, name: str, exc: BaseException) -> None:
        assert self._nvml is not None
        self._errors.setdefault(name, _describe(exc))
        if _is_not_supported(self._nvml, exc):
            self._disabled.add(name)  # it will not start working; spare the calls

    def _read_reasons(self) -> int:
        if "clocks_event_reasons" in self._disabled:
            return _UNKNOWN_REASONS
        nvml = self._nvml
        assert nvml is not None
        # Newer drivers name it "clocks event", older ones "clocks throttle": same bits.
        candidates = self._reason_fns or [
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons",
        ]
        last: BaseException | None = None
        for fn_name in candidates:
            fn = getattr(nvml, fn_name, None)
            if fn is None:
                continue
            try:
                value = int(fn(self._handle))
            except Exception as exc:
                last = exc
                continue
            self._reason_fns = [fn_name]
            return value
        if last is None:
            last = AttributeError("this nvidia-ml-py has no clocks-event reason call")
            self._disabled.add("clocks_event_reasons")
        self._note_error("clocks_event_reasons", last)
        return _UNKNOWN_REASONS

    def _open_gpm(self) -> _Gpm | None:
        nvml = self._nvml
        assert nvml is not None
        if not hasattr(nvml, "nvmlGpmQueryDeviceSupport"):
            self._errors["gpm"] = "this nvidia-ml-py has no GPM calls"
            return None
        try:
            support = nvml.nvmlGpmQueryDeviceSupport(self._handle)
            if not getattr(support, "isSupportedDevice", 0):
                self._errors["gpm"] = "GPM not supported on this GPU (Hopper or newer has it)"
                return None
            return _Gpm(nvml, self._handle, self.gpm_interval_s)
        except Exception as exc:
            self._errors["gpm"] = f"GPM unavailable: {_describe(exc)}"
            return None

    def _read_gpm(self) -> dict[str, float]:
        if self._gpm is None:
            return {}
        try:
            return self._gpm.read() or {}
        except Exception as exc:
            self._errors.setdefault("gpm", _describe(exc))
            return {}

    def _describe_device(self) -> dict[str, Any]:
        nvml, h = self._nvml, self._handle
        assert nvml is not None
        facts: dict[str, Any] = {"index": None if self.uuid else self.device_index}
        for key, fn_name in (("name", "nvmlDeviceGetName"), ("uuid", "nvmlDeviceGetUUID")):
            try:
                value = getattr(nvml, fn_name)(h)
                facts[key] = value.decode() if isinstance(value, bytes) else str(value)
            except Exception as exc:
                self._errors.setdefault(key, _describe(exc))
        return facts

    def _build(self) -> Telemetry:
        rows = list(self._rows)
        names = list(METRICS)
        if rows:
            matrix = np.array([r[1] for r in rows], dtype=np.float64)
        else:
            matrix = np.empty((0, len(names)))
        return Telemetry(
            time_ns=np.array([r[0] for r in rows], dtype=np.int64),
            columns={name: matrix[:, k].copy() for k, name in enumerate(names)},
            reasons=np.array([r[2] for r in rows], dtype=np.int64),
            device=dict(self._device),
            errors=dict(self._errors),
            interval_s=self.interval_s,
        )


def _shutdown(nvml: ModuleType) -> None:
    with contextlib.suppress(Exception):  # nothing useful to do about a failing shutdown
        nvml.nvmlShutdown()


# --------------------------------------------------------------------------------------------
# DCGM through Prometheus (cluster mode)
# --------------------------------------------------------------------------------------------

DCGM_FIELDS = ("DCGM_FI_PROF_SM_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE")


def _selector(pod_selector: str | None) -> str:
    """``pod=~"kts-.*"``-style matchers as given, or a bare pod-name regex."""
    if not pod_selector:
        return ""
    if "=" in pod_selector:
        return "{" + pod_selector.strip("{}") + "}"
    return '{pod=~"' + pod_selector.replace('"', '\\"') + '"}'


def _query_range(
    url: str, query: str, start_s: float, end_s: float, step_s: float, timeout_s: float
) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode(
        {"query": query, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}", "step": f"{step_s:g}"}
    )
    endpoint = url.rstrip("/") + "/api/v1/query_range?" + params
    with urllib.request.urlopen(endpoint, timeout=timeout_s) as response:
        body = json.loads(response.read().decode("utf-8"))
    if body.get("status") != "success":
        raise ValueError(f"Prometheus answered {body.get('errorType')}: {body.get('error')}")
    return list(body.get("data", {}).get("result", []))


def _series_stats(series: list[dict[str, Any]]) -> dict[str, Any]:
    per_series = []
    pooled: list[float] = []
    for s in series:
        values = [float(v) for _, v in s.get("values", []) if v not in ("NaN", "+Inf", "-Inf")]
        pooled += values
        per_series.append(
            {"labels": s.get("metric", {}), "mean": _mean(values), "points": len(values)}
        )
    return {
        "mean": _mean(pooled),
        "max": max(pooled) if pooled else None,
        "points": len(pooled),
        "series": per_series,
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def fetch_dcgm(
    url: str,
    windows: Sequence[WindowLike],
    pod_selector: str | None = None,
    *,
    step_s: float = 1.0,
    timeout_s: float = 5.0,
) -> dict[str, Any]:
    """DCGM profiling fields over each phase window from a Prometheus HTTP API.

    Returns ``{"url", "windows": [{"phase", "round", "started_ns", "ended_ns", "metrics":
    {field: {"mean", "max", "points", "series"}}}], "by_phase": {phase: {field: mean}},
    "errors": [...], "note"}``. Never raises for an unreachable or unhappy Prometheus:
    cluster telemetry is a nice-to-have, so failures are listed in ``errors``.
    """
    selector = _selector(pod_selector)
    out: dict[str, Any] = {"url": url, "selector": selector, "windows": [], "errors": []}
    pooled: dict[str, dict[str, list[float]]] = {}
    for w in windows:
        start_s, end_s = int(w.started_ns) / 1e9, int(w.ended_ns) / 1e9
        entry: dict[str, Any] = {
            "phase": w.phase,
            "round": int(w.round),
            "started_ns": int(w.started_ns),
            "ended_ns": int(w.ended_ns),
            "metrics": {},
        }
        for name in DCGM_FIELDS:
            try:
                series = _query_range(url, name + selector, start_s, end_s, step_s, timeout_s)
            except (OSError, ValueError, urllib.error.URLError) as exc:
                out["errors"].append(f"{name} for {w.phase} round {w.round}: {_describe(exc)}")
                continue
            stats = _series_stats(series)
            entry["metrics"][name] = stats
            if stats["mean"] is not None:
                pooled.setdefault(w.phase, {}).setdefault(name, []).append(stats["mean"])
        out["windows"].append(entry)
    out["by_phase"] = {
        phase: {name: _mean(values) for name, values in fields.items()}
        for phase, fields in pooled.items()
    }
    out["note"] = (
        "DCGM profiling values are per GPU, not per pod (under time-slicing every pod on the "
        "GPU sees the same value), and dcgm-exporter samples every 30 s by default: phase "
        "windows shorter than its interval see one repeated sample."
    )
    return out
