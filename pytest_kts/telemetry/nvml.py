"""NVML sampling: :class:`TelemetrySampler` polls the GPU in a background thread."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import numpy as np

from pytest_kts.telemetry.record import (
    _NOT_SUPPORTED,
    _UNKNOWN_REASONS,
    GPM_METRICS,
    METRICS,
    Telemetry,
    TelemetryUnavailable,
    _describe,
)

# --------------------------------------------------------------------------------------------
# NVML sampling
# --------------------------------------------------------------------------------------------


def _import_pynvml() -> ModuleType | None:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    module: ModuleType = pynvml
    return module


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
