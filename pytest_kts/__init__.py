"""pytest-kts: GPU co-location tail latency as a test that can fail.

The public API is what this module exports; everything else may change.
"""

from __future__ import annotations

from pytest_kts.backends.base import TenantSpec
from pytest_kts.errors import (
    ClusterError,
    ColocationError,
    ConfigError,
    KtsError,
    NoDeviceError,
    StatisticsError,
    WorkerError,
)
from pytest_kts.fixture import Kts, Tenant, assert_df
from pytest_kts.results import ScenarioResult, TenantResult
from pytest_kts.verdict import (
    DegradationFactor,
    InconclusiveError,
    KtsInconclusiveWarning,
    degradation,
)

__version__ = "0.2.0"

__all__ = [
    "ClusterError",
    "ColocationError",
    "ConfigError",
    "DegradationFactor",
    "InconclusiveError",
    "Kts",
    "KtsError",
    "KtsInconclusiveWarning",
    "NoDeviceError",
    "ScenarioResult",
    "StatisticsError",
    "Tenant",
    "TenantResult",
    "TenantSpec",
    "WorkerError",
    "__version__",
    "assert_df",
    "degradation",
]
