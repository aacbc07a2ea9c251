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

Modules: :mod:`.record` (the data, its aggregates, JSON/CSV, warnings), :mod:`.nvml` (the
sampler), :mod:`.dcgm` (the Prometheus client). The names below are the public ones.
"""

from __future__ import annotations

from pytest_kts.telemetry.dcgm import DCGM_FIELDS, fetch_dcgm
from pytest_kts.telemetry.nvml import TelemetrySampler
from pytest_kts.telemetry.record import (
    CLOCK_WARN_FRACTION,
    GPM_METRICS,
    METRICS,
    REASON_WARN_FRACTION,
    REASONS,
    PhaseTelemetry,
    Telemetry,
    TelemetryUnavailable,
    WindowLike,
)

__all__ = [
    "CLOCK_WARN_FRACTION",
    "DCGM_FIELDS",
    "GPM_METRICS",
    "METRICS",
    "REASONS",
    "REASON_WARN_FRACTION",
    "PhaseTelemetry",
    "Telemetry",
    "TelemetrySampler",
    "TelemetryUnavailable",
    "WindowLike",
    "fetch_dcgm",
]
