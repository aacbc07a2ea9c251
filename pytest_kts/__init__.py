"""pytest-kts: GPU co-location tail latency as a test that can fail.

The public API is what this module exports; everything else may change.

Names are imported on first use (PEP 562): a worker process imports ``pytest_kts.protocol``,
and that must not pull in what only the test side needs (tabulate through ``matrix.py``,
pytest, matplotlib, kubernetes). ``import pytest_kts`` alone imports nothing else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# name -> module that defines it
_EXPORTS = {
    "TenantSpec": "pytest_kts.backends.base",
    "Attribution": "pytest_kts.attribution",
    "CausalAttribution": "pytest_kts.causal",
    "Evidence": "pytest_kts.evidence",
    "PhaseEvidence": "pytest_kts.evidence",
    "ClusterError": "pytest_kts.errors",
    "ColocationError": "pytest_kts.errors",
    "ConfigError": "pytest_kts.errors",
    "KtsError": "pytest_kts.errors",
    "KtsNotRunWarning": "pytest_kts.errors",
    "NoDeviceError": "pytest_kts.errors",
    "RegressionError": "pytest_kts.errors",
    "StatisticsError": "pytest_kts.errors",
    "WorkerError": "pytest_kts.errors",
    "Kts": "pytest_kts.fixture",
    "Tenant": "pytest_kts.fixture",
    "assert_df": "pytest_kts.fixture",
    "MatrixResult": "pytest_kts.matrix",
    "PackingResult": "pytest_kts.packing",
    "PhaseWindow": "pytest_kts.results",
    "ScenarioResult": "pytest_kts.results",
    "TenantResult": "pytest_kts.results",
    "Summary": "pytest_kts.stats",
    "DegradationFactor": "pytest_kts.verdict",
    "InconclusiveError": "pytest_kts.verdict",
    "KtsInconclusiveWarning": "pytest_kts.verdict",
    "degradation": "pytest_kts.verdict",
}

__all__ = [
    "Attribution",
    "CausalAttribution",
    "ClusterError",
    "ColocationError",
    "ConfigError",
    "DegradationFactor",
    "Evidence",
    "InconclusiveError",
    "Kts",
    "KtsError",
    "KtsInconclusiveWarning",
    "KtsNotRunWarning",
    "MatrixResult",
    "NoDeviceError",
    "PackingResult",
    "PhaseEvidence",
    "PhaseWindow",
    "RegressionError",
    "ScenarioResult",
    "StatisticsError",
    "Summary",
    "Tenant",
    "TenantResult",
    "TenantSpec",
    "WorkerError",
    "__version__",
    "assert_df",
    "degradation",
]

if TYPE_CHECKING:
    from pytest_kts.attribution import Attribution
    from pytest_kts.backends.base import TenantSpec
    from pytest_kts.causal import CausalAttribution
    from pytest_kts.errors import (
        ClusterError,
        ColocationError,
        ConfigError,
        KtsError,
        KtsNotRunWarning,
        NoDeviceError,
        RegressionError,
        StatisticsError,
        WorkerError,
    )
    from pytest_kts.evidence import Evidence, PhaseEvidence
    from pytest_kts.fixture import Kts, Tenant, assert_df
    from pytest_kts.matrix import MatrixResult
    from pytest_kts.packing import PackingResult
    from pytest_kts.results import PhaseWindow, ScenarioResult, TenantResult
    from pytest_kts.stats import Summary
    from pytest_kts.verdict import (
        DegradationFactor,
        InconclusiveError,
        KtsInconclusiveWarning,
        degradation,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_kts' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is an ordinary one
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
