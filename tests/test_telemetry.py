"""Telemetry against a fake ``pynvml`` (CI has no GPU), and DCGM against a local Prometheus."""

from __future__ import annotations

import http.server
import json
import math
import socket
import sys
import threading
import time
import types
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from pytest_kts.results import PhaseWindow
from pytest_kts.telemetry import (
    METRICS,
    REASONS,
    Telemetry,
    TelemetrySampler,
    TelemetryUnavailable,
    fetch_dcgm,
)

# --------------------------------------------------------------------------------------------
# A fake NVML
# --------------------------------------------------------------------------------------------


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        self.value = value
        super().__init__({3: "Not Supported", 9: "Driver Not Loaded", 15: "GPU is lost"}[value])


class FakeNvml:
    """Builds a module that answers like nvidia-ml-py, with knobs for failures."""

    def __init__(self, *, gpm: str = "absent", count: int = 1) -> None:
        self.count = count
        self.sm_clock = 1980
        self.reasons = 0x0
        self.fail: dict[str, BaseException] = {}  # call name -> exception to raise
        self.fail_every_other: set[str] = set()
        self.calls: dict[str, int] = {}
        self.gpm = gpm  # "absent" | "unsupported" | "present"
        self.gpm_live: list[Any] = []
        self.module = self._build()

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if name in self.fail:
            raise self.fail[name]
        if name in self.fail_every_other and self.calls[name] % 2 == 0:
            raise FakeNVMLError(15)

    def _build(self) -> types.ModuleType:
        m = types.ModuleType("pynvml")
        fake = self
        m.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
        m.NVML_SUCCESS = 0  # type: ignore[attr-defined]
        m.NVML_ERROR_NOT_SUPPORTED = 3  # type: ignore[attr-defined]
        m.NVML_CLOCK_SM, m.NVML_CLOCK_MEM = 1, 2  # type: ignore[attr-defined]
        m.NVML_GPM_METRICS_GET_VERSION = 1  # type: ignore[attr-defined]

        def call(name: str, value: Any) -> Any:
            def fn(*args: Any) -> Any:
                fake._call(name)
                return value(*args) if callable(value) else value

            return fn

        m.nvmlInit = call("nvmlInit", None)  # type: ignore[attr-defined]
        m.nvmlShutdown = call("nvmlShutdown", None)  # type: ignore[attr-defined]
        m.nvmlDeviceGetCount = call("nvmlDeviceGetCount", lambda: fake.count)  # type: ignore[attr-defined]
        m.nvmlDeviceGetHandleByIndex = call("nvmlDeviceGetHandleByIndex", lambda i: ("gpu", i))  # type: ignore[attr-defined]
        m.nvmlDeviceGetHandleByUUID = call("nvmlDeviceGetHandleByUUID", lambda u: ("gpu", u))  # type: ignore[attr-defined]
        m.nvmlDeviceGetName = call("nvmlDeviceGetName", "NVIDIA H100 80GB HBM3")  # type: ignore[attr-defined]
        m.nvmlDeviceGetUUID = call("nvmlDeviceGetUUID", b"GPU-1234")  # type: ignore[attr-defined]
        m.nvmlDeviceGetClockInfo = call(  # type: ignore[attr-defined]
            "nvmlDeviceGetClockInfo", lambda h, kind: fake.sm_clock if kind == 1 else 2619
        )
        m.nvmlDeviceGetUtilizationRates = call(  # type: ignore[attr-defined]
            "nvmlDeviceGetUtilizationRates", types.SimpleNamespace(gpu=87, memory=41)
        )
        m.nvmlDeviceGetPowerUsage = call("nvmlDeviceGetPowerUsage", 312_500)  # type: ignore[attr-defined]
        m.nvmlDeviceGetCurrentClocksEventReasons = call(  # type: ignore[attr-defined]
            "nvmlDeviceGetCurrentClocksEventReasons", lambda h: fake.reasons
        )
        m.nvmlDeviceGetCurrentClocksThrottleReasons = call(  # type: ignore[attr-defined]
            "nvmlDeviceGetCurrentClocksThrottleReasons", lambda h: fake.reasons
        )
        if self.gpm != "absent":
            self._add_gpm(m)
        return m

    def _add_gpm(self, m: types.ModuleType) -> None:
        fake = self

        def support(handle: Any) -> Any:
            fake._call("nvmlGpmQueryDeviceSupport")
            return types.SimpleNamespace(isSupportedDevice=int(fake.gpm == "present"))

        def alloc() -> Any:
            fake._call("nvmlGpmSampleAlloc")
            sample = types.SimpleNamespace(taken=0)
            fake.gpm_live.append(sample)
            return sample

        def get(handle: Any, sample: Any) -> Any:
            fake._call("nvmlGpmSampleGet")
            sample.taken += 1
            return sample

        def free(sample: Any) -> None:
            fake._call("nvmlGpmSampleFree")
            fake.gpm_live.remove(sample)

        class MetricsGet:
            def __init__(self) -> None:
                self.metrics = [
                    types.SimpleNamespace(metricId=0, nvmlReturn=-1, value=0.0) for _ in range(8)
                ]

        def metrics_get(request: Any) -> Any:
            fake._call("nvmlGpmMetricsGet")
            assert request.version == 1 and request.sample1 is not request.sample2
            values = {2: 64.0, 3: 23.5, 10: 55.0}
            for metric in request.metrics[: request.numMetrics]:
                # DRAM bandwidth answers with an error code: it must become nan, alone.
                metric.nvmlReturn = 3 if metric.metricId == 10 else 0
                metric.value = values[metric.metricId]
            return request

        m.nvmlGpmQueryDeviceSupport = support  # type: ignore[attr-defined]
        m.nvmlGpmSampleAlloc = alloc  # type: ignore[attr-defined]
        m.nvmlGpmSampleGet = get  # type: ignore[attr-defined]
        m.nvmlGpmSampleFree = free  # type: ignore[attr-defined]
        m.c_nvmlGpmMetricsGet_t = MetricsGet  # type: ignore[attr-defined]
        m.nvmlGpmMetricsGet = metrics_get  # type: ignore[attr-defined]


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    return fake


def install(monkeypatch: pytest.MonkeyPatch, fake: FakeNvml) -> FakeNvml:
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    return fake


def sampled(n: int = 5, **kwargs: Any) -> Telemetry:
    """Start, take ``n - 1`` more samples by hand (deterministic), stop."""
    sampler = TelemetrySampler(interval_s=0.1, **kwargs).start()
    for _ in range(n - 1):
        sampler.sample_now()
    return sampler.stop()


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def test_background_thread_samples_at_20_hz_on_the_epoch_clock(nvml: FakeNvml) -> None:
    before = time.time_ns()
    sampler = TelemetrySampler(0, interval_s=0.02).start()
    time.sleep(0.3)
    telemetry = sampler.stop()
    after = time.time_ns()
    assert 8 <= len(telemetry) <= 20  # ~15 expected; generous for a loaded 2-core CI box
    assert np.all(np.diff(telemetry.time_ns) > 0)
    assert before <= telemetry.time_ns[0] and telemetry.time_ns[-1] <= after
    assert np.all(telemetry.column("sm_clock_mhz") == 1980)
    assert np.all(telemetry.column("mem_clock_mhz") == 2619)
    assert np.all(telemetry.column("power_w") == 312.5)  # NVML answers milliwatts
    assert np.all(telemetry.column("gpu_util_pct") == 87)
    assert np.all(telemetry.column("mem_util_pct") == 41)
    assert telemetry.device == {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1234"}
    assert nvml.calls["nvmlShutdown"] == nvml.calls["nvmlInit"]
    assert sampler.stop() is telemetry  # idempotent
    # No sample is taken after stop() returned.
    time.sleep(0.05)
    assert len(sampler.stop()) == len(telemetry)


def test_interval_must_be_10_hz_or_faster() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        TelemetrySampler(interval_s=0.5)


def test_unsupported_metric_is_nan_and_no_longer_called(nvml: FakeNvml) -> None:
    nvml.fail["nvmlDeviceGetPowerUsage"] = FakeNVMLError(3)
    telemetry = sampled(5)
    assert np.isnan(telemetry.column("power_w")).all()
    assert telemetry.errors["power_w"] == "Not Supported"
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 1
    # Everything else kept working.
    assert np.all(telemetry.column("sm_clock_mhz") == 1980)
    assert np.all(telemetry.column("gpu_util_pct") == 87)


def test_transient_failure_loses_only_that_sample_of_that_metric(nvml: FakeNvml) -> None:
    nvml.fail_every_other.add("nvmlDeviceGetUtilizationRates")
    telemetry = sampled(6)
    util = telemetry.column("gpu_util_pct")
    assert np.isnan(util).sum() == 3 and np.nansum(util) == 3 * 87
    assert np.isnan(telemetry.column("mem_util_pct")).sum() == 3
    assert telemetry.errors["utilization"] == "GPU is lost"
    assert nvml.calls["nvmlDeviceGetUtilizationRates"] == 6  # kept trying
    assert not np.isnan(telemetry.column("sm_clock_mhz")).any()


def test_any_exception_in_a_getter_is_contained(nvml: FakeNvml) -> None:
    nvml.fail["nvmlDeviceGetClockInfo"] = RuntimeError("ctypes blew up")
    telemetry = sampled(3)
    assert np.isnan(telemetry.column("sm_clock_mhz")).all()
    assert np.isnan(telemetry.column("mem_clock_mhz")).all()
    assert telemetry.errors["sm_clock_mhz"] == "ctypes blew up"
    assert np.all(telemetry.column("power_w") == 312.5)


def test_clocks_event_reasons_fall_back_to_the_throttle_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = install(monkeypatch, FakeNvml())
    del fake.module.nvmlDeviceGetCurrentClocksEventReasons
    fake.reasons = REASONS["gpu_idle"] | REASONS["sw_power_cap"]
    telemetry = sampled(3)
    assert np.all(telemetry.reasons == 0x5)
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 3


def test_clocks_event_reasons_fall_back_when_the_new_call_fails(nvml: FakeNvml) -> None:
    nvml.fail["nvmlDeviceGetCurrentClocksEventReasons"] = FakeNVMLError(3)
    nvml.reasons = REASONS["gpu_idle"]
    telemetry = sampled(3)
    assert np.all(telemetry.reasons == 0x1)


def test_no_reason_call_at_all_gives_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install(monkeypatch, FakeNvml())
    del fake.module.nvmlDeviceGetCurrentClocksEventReasons
    del fake.module.nvmlDeviceGetCurrentClocksThrottleReasons
    telemetry = sampled(2)
    assert np.all(telemetry.reasons == -1)
    assert "clocks_event_reasons" in telemetry.errors


@pytest.mark.parametrize("gpm", ["absent", "unsupported"])
def test_without_gpm_its_columns_are_nan(monkeypatch: pytest.MonkeyPatch, gpm: str) -> None:
    fake = install(monkeypatch, FakeNvml(gpm=gpm))
    telemetry = sampled(3, gpm_interval_s=0.0)
    for name in ("gpm_sm_util_pct", "gpm_sm_occupancy_pct", "gpm_dram_bw_util_pct"):
        assert np.isnan(telemetry.column(name)).all()
    assert "gpm" in telemetry.errors.get("gpm", "").lower()
    assert "nvmlGpmSampleAlloc" not in fake.calls
    assert np.all(telemetry.column("sm_clock_mhz") == 1980)


def test_gpm_present_reads_metrics_between_two_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install(monkeypatch, FakeNvml(gpm="present"))
    telemetry = sampled(4, gpm_interval_s=0.0)
    assert np.all(telemetry.column("gpm_sm_util_pct") == 64.0)
    assert np.all(telemetry.column("gpm_sm_occupancy_pct") == 23.5)
    assert np.isnan(telemetry.column("gpm_dram_bw_util_pct")).all()  # its own error code
    assert fake.calls["nvmlGpmSampleAlloc"] == 2
    assert fake.calls["nvmlGpmSampleGet"] == 1 + 4  # the first, then one per sample
    assert fake.gpm_live == []  # both samples freed


def test_gpm_waits_for_its_own_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeNvml(gpm="present"))
    telemetry = sampled(4, gpm_interval_s=60.0)
    assert np.isnan(telemetry.column("gpm_sm_util_pct")).all()
    assert not np.isnan(telemetry.column("sm_clock_mhz")).any()


def test_gpm_failing_mid_run_leaves_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install(monkeypatch, FakeNvml(gpm="present"))
    fake.fail["nvmlGpmMetricsGet"] = FakeNVMLError(15)
    telemetry = sampled(3, gpm_interval_s=0.0)
    assert np.isnan(telemetry.column("gpm_sm_util_pct")).all()
    assert telemetry.errors["gpm"] == "GPU is lost"
    assert np.all(telemetry.column("sm_clock_mhz") == 1980)


def test_pick_gpu_by_uuid(nvml: FakeNvml) -> None:
    sampled(1, uuid="GPU-abcd")
    assert nvml.calls["nvmlDeviceGetHandleByUUID"] == 1
    assert "nvmlDeviceGetHandleByIndex" not in nvml.calls


# --------------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------------


def test_unavailable_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes "import pynvml" fail
    reason = TelemetrySampler.unavailable_reason()
    assert reason is not None and "nvidia-ml-py" in reason
    with pytest.raises(TelemetryUnavailable, match="nvidia-ml-py"):
        TelemetrySampler().start()


def test_unavailable_without_driver(nvml: FakeNvml) -> None:
    nvml.fail["nvmlInit"] = FakeNVMLError(9)
    reason = TelemetrySampler.unavailable_reason()
    assert reason is not None and "Driver Not Loaded" in reason and "driver" in reason
    with pytest.raises(TelemetryUnavailable, match="Driver Not Loaded"):
        TelemetrySampler().start()


def test_unavailable_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install(monkeypatch, FakeNvml(count=0))
    assert TelemetrySampler.unavailable_reason() == "NVML sees no GPU"
    assert fake.calls["nvmlShutdown"] == 1


def test_available_and_index_checked(nvml: FakeNvml) -> None:
    assert TelemetrySampler.unavailable_reason(0) is None
    reason = TelemetrySampler.unavailable_reason(3)
    assert reason is not None and "no index 3" in reason


# --------------------------------------------------------------------------------------------
# Aggregates, join, warnings
# --------------------------------------------------------------------------------------------

S = 1_000_000_000  # ns per second
T0 = 1_700_000_000 * S


def synthetic(
    solo_clock: float, shared_clock: float, *, solo_reasons: int = 0, shared_reasons: int = 0
) -> tuple[Telemetry, list[PhaseWindow]]:
    """Two rounds: solo fft 0-1 s, solo gemm 1-2 s, shared 2-3 s; then again 3-6 s (20 Hz)."""
    times = T0 + np.arange(0, 6 * S, S // 20, dtype=np.int64)
    in_shared = ((times - T0) // S) % 3 == 2
    sm = np.where(in_shared, shared_clock, solo_clock).astype(float)
    reasons = np.where(in_shared, shared_reasons, solo_reasons).astype(np.int64)
    columns = {name: np.full(times.size, np.nan) for name in METRICS}
    columns["sm_clock_mhz"] = sm
    columns["gpu_util_pct"] = np.where(in_shared, 100.0, 30.0)
    columns["power_w"] = np.where(in_shared, 500.0, 120.0)
    telemetry = Telemetry(times, columns, reasons, interval_s=0.05)
    windows = []
    for rnd in range(2):
        base = T0 + rnd * 3 * S
        windows += [
            PhaseWindow("solo", rnd, ("fft",), base, base + S - 1),
            PhaseWindow("solo", rnd, ("gemm",), base + S, base + 2 * S - 1),
            PhaseWindow("shared", rnd, ("fft", "gemm"), base + 2 * S, base + 3 * S - 1),
        ]
    return telemetry, windows


def test_summarize_per_phase_window() -> None:
    telemetry, windows = synthetic(345, 1980, solo_reasons=REASONS["gpu_idle"])
    per = telemetry.summarize(windows)
    assert set(per) == {("solo", 0), ("shared", 0), ("solo", 1), ("shared", 1)}
    solo0, shared1 = per[("solo", 0)], per[("shared", 1)]
    assert solo0.samples == 40 and shared1.samples == 20
    assert solo0.sm_clock_mean_mhz == 345 and solo0.sm_clock_min_mhz == 345
    assert shared1.sm_clock_max_mhz == 1980 and shared1.gpu_util_mean == 100
    assert shared1.power_mean_w == 500
    assert solo0.reasons["gpu_idle"] == 1.0 and shared1.reasons["gpu_idle"] == 0.0
    assert math.isnan(solo0.gpm_sm_util_mean) and math.isnan(solo0.mem_clock_mean_mhz)
    assert math.isclose(solo0.seconds, 2.0, rel_tol=1e-6)
    d = solo0.to_dict()
    assert d["gpm_sm_util_mean"] is None and json.dumps(d)


def test_by_phase_pools_rounds() -> None:
    telemetry, windows = synthetic(345, 1980)
    phases = telemetry.by_phase(windows)
    assert phases["solo"].samples == 80 and phases["shared"].samples == 40
    assert phases["solo"].round is None


def test_join_gives_each_iteration_the_nearest_clock() -> None:
    telemetry, _ = synthetic(345, 1980)
    starts = np.array([T0 + S // 2, T0 + 2 * S + S // 2 + 1, T0 + 100 * S, T0 - S], dtype=np.int64)
    clocks = telemetry.join(starts)
    assert clocks[0] == 345 and clocks[1] == 1980
    assert np.isnan(clocks[2]) and np.isnan(clocks[3])  # far outside the sampled span
    assert np.isnan(Telemetry(np.array([], dtype=np.int64), {}, np.array([])).join(starts)).all()


def test_clock_warning_idle_solo_understates_df() -> None:
    telemetry, windows = synthetic(345, 1980, solo_reasons=REASONS["gpu_idle"])
    (warning,) = telemetry.clock_warnings(windows)
    assert "median SM clock of 345 MHz" in warning and "shared at 1980 MHz" in warning
    assert "understated" in warning and "GpuIdle" in warning and "100%" in warning


def test_clock_warning_slow_shared_overstates_df() -> None:
    telemetry, windows = synthetic(1980, 1400)
    (warning,) = telemetry.clock_warnings(windows)
    assert "1980 MHz" in warning and "1400 MHz" in warning and "overstated" in warning


def test_no_warning_for_similar_clocks() -> None:
    telemetry, windows = synthetic(1900, 1980)  # 4% apart
    assert telemetry.clock_warnings(windows) == []


def test_warning_for_a_power_cap_in_one_phase_only() -> None:
    telemetry, windows = synthetic(1980, 1980, shared_reasons=REASONS["sw_power_cap"])
    (warning,) = telemetry.clock_warnings(windows)
    assert "sw_power_cap" in warning and "0% of solo" in warning and "100% of shared" in warning


def test_warning_when_no_sample_fell_in_a_phase() -> None:
    telemetry, windows = synthetic(345, 1980)
    late = [
        PhaseWindow(w.phase, w.round, w.tenants, w.started_ns + 60 * S, w.ended_ns + 60 * S)
        if w.phase == "shared"
        else w
        for w in windows
    ]
    (warning,) = telemetry.clock_warnings(late)
    assert warning.startswith("shared phases:") and "no telemetry sample" in warning


# --------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_save_and_load_round_trip(tmp_path: Path, suffix: str) -> None:
    telemetry, windows = synthetic(345, 1980, solo_reasons=REASONS["gpu_idle"])
    telemetry.reasons[3] = -1
    path = telemetry.save(tmp_path / "sub" / f"telemetry{suffix}")
    loaded = Telemetry.load(path)
    assert np.array_equal(loaded.time_ns, telemetry.time_ns)
    assert np.array_equal(loaded.reasons, telemetry.reasons)
    for name in METRICS:
        assert np.allclose(loaded.column(name), telemetry.column(name), equal_nan=True)
    assert loaded.clock_warnings(windows) == telemetry.clock_warnings(windows)


def test_json_is_strict_json(tmp_path: Path) -> None:
    telemetry, _ = synthetic(345, 1980)
    text = telemetry.save(tmp_path / "t.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


# --------------------------------------------------------------------------------------------
# DCGM through Prometheus
# --------------------------------------------------------------------------------------------


class FakePrometheus(http.server.BaseHTTPRequestHandler):
    queries: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        type(self).queries.append(params)
        if url.path != "/api/v1/query_range":
            self.send_error(404)
            return
        if "DRAM" in params["query"] and float(params["start"]) >= T0 / S + 2:
            body = {"status": "error", "errorType": "bad_data", "error": "boom"}
        else:
            start = float(params["start"])
            value = 0.9 if float(params["start"]) >= T0 / S + 2 else 0.2
            series = [
                {
                    "metric": {"pod": "kts-fft", "gpu": "0"},
                    "values": [[start, str(value)], [start + 1, str(value)]],
                },
                {"metric": {"pod": "kts-gemm", "gpu": "0"}, "values": [[start, "NaN"]]},
            ]
            body = {"status": "success", "data": {"resultType": "matrix", "result": series}}
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass


@pytest.fixture
def prometheus() -> Iterator[str]:
    FakePrometheus.queries = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_dcgm_queries_each_window(prometheus: str) -> None:
    windows = [
        PhaseWindow("solo", 0, ("fft",), T0, T0 + S),
        PhaseWindow("shared", 0, ("fft", "gemm"), T0 + 2 * S, T0 + 3 * S),
    ]
    out = fetch_dcgm(prometheus, windows, 'namespace="kts",pod=~"kts-.*"')
    queries = FakePrometheus.queries
    assert len(queries) == 4
    assert queries[0]["query"] == 'DCGM_FI_PROF_SM_ACTIVE{namespace="kts",pod=~"kts-.*"}'
    assert float(queries[0]["start"]) == T0 / S and float(queries[0]["end"]) == T0 / S + 1
    solo, shared = out["windows"]
    sm = solo["metrics"]["DCGM_FI_PROF_SM_ACTIVE"]
    assert sm["mean"] == pytest.approx(0.2) and sm["points"] == 2  # NaN point skipped
    assert sm["series"][0]["labels"]["pod"] == "kts-fft"
    assert shared["metrics"]["DCGM_FI_PROF_SM_ACTIVE"]["mean"] == pytest.approx(0.9)
    # The failing query is reported, not raised, and the others are kept.
    assert "DCGM_FI_PROF_DRAM_ACTIVE" not in shared["metrics"]
    assert len(out["errors"]) == 1 and "boom" in out["errors"][0]
    assert out["by_phase"]["shared"]["DCGM_FI_PROF_SM_ACTIVE"] == pytest.approx(0.9)


def test_fetch_dcgm_bare_pod_regex(prometheus: str) -> None:
    fetch_dcgm(prometheus, [PhaseWindow("solo", 0, ("a",), T0, T0 + S)], "kts-.*")
    assert FakePrometheus.queries[0]["query"] == 'DCGM_FI_PROF_SM_ACTIVE{pod=~"kts-.*"}'


def test_fetch_dcgm_unreachable_is_an_error_entry_not_an_exception() -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    out = fetch_dcgm(
        f"http://127.0.0.1:{port}",
        [PhaseWindow("solo", 0, ("a",), T0, T0 + S)],
        None,
        timeout_s=1.0,
    )
    assert time.monotonic() - started < 5
    assert len(out["errors"]) == 2 and out["windows"][0]["metrics"] == {}
