"""Degradation factors with chosen figures, for tests of what reads them (verdicts, reports,
plots): one :class:`~pytest_kts.evidence.Evidence` record built by hand."""

from __future__ import annotations

import math

from pytest_kts.evidence import Evidence, PhaseEvidence
from pytest_kts.verdict import DegradationFactor


def phase(kept: int = 540, quantile: float = 1.231, trimmed: int = 60, dropped: int = 0):
    return PhaseEvidence(
        measured=kept + trimmed,
        kept=kept,
        trimmed=trimmed,
        dropped=dropped,
        rounds=5,
        quantile=quantile,
        exceedances=max(kept // 100, 1),
        clusters=max(kept // 100, 1),
        theta=1.0,
        inflation=1.0,
        inflation_up=1.0,
        critical=1.96,
        half_down=0.05,
        half_up=0.05,
    )


def make_df(
    ci: tuple[float, float],
    *,
    value: float = 1.68,
    reason: str | None = None,
    policy: str = "warn",
    level: float = 0.05,
    confidence: float = 0.95,
    solo: PhaseEvidence | None = None,
    shared: PhaseEvidence | None = None,
    limited_by: str = "tail",
    clock: str = "host",
) -> DegradationFactor:
    solo = solo or phase()
    shared = shared or phase(quantile=solo.quantile * value, trimmed=55)
    evidence = Evidence(
        p=99.0,
        clock=clock,
        confidence=confidence,
        level=level,
        estimate=value,
        ci=ci,
        ci_single=ci,
        se_lower=0.1,
        se_upper=0.1,
        critical_lower=1.96,
        critical_upper=1.96,
        units=10,
        unit_kind="round pairs",
        jackknife_dof=9.0,
        floor=368,
        solo=solo,
        shared=shared,
        drift_share=0.0,
        limited_by=limited_by if math.isfinite(ci[1]) and ci[0] > 0 else "floor",
        reason=reason,
    )
    return DegradationFactor(evidence=evidence, on_inconclusive=policy)
