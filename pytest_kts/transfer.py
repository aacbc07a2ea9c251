"""Results as plain data, so they can cross a process boundary and come back whole.

Under pytest-xdist each worker process runs its own scenarios; the controller writes the one
report and prints the one table. The worker puts :func:`dumps` of its results into
``config.workeroutput`` (the channel pytest-xdist documents for this); the controller reads it
in ``pytest_testnodedown`` and rebuilds the objects with :func:`loads`. JSON text, because
execnet carries only builtin types (no numpy), and JSON keeps NaN as written by Python.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from pytest_kts.backends.base import TenantSpec
from pytest_kts.evidence import Evidence
from pytest_kts.matrix import MatrixResult
from pytest_kts.results import CheckOutcome, PhaseWindow, ScenarioResult, TenantResult
from pytest_kts.samples import PhaseSamples, TenantSamples
from pytest_kts.verdict import DegradationFactor

FORMAT = 1
_INT_ARRAYS = ("round", "iteration", "start_ns", "end_ns")
_FLOAT_ARRAYS = ("host_ms", "device_ms")


def _phase(ps: PhaseSamples) -> dict[str, Any]:
    data: dict[str, Any] = {"tenant": ps.tenant, "phase": ps.phase}
    for name in (*_INT_ARRAYS, *_FLOAT_ARRAYS):
        data[name] = np.asarray(getattr(ps, name)).tolist()
    return data


def _phase_back(data: dict[str, Any]) -> PhaseSamples:
    arrays = {n: np.asarray(data[n], dtype=np.int64) for n in _INT_ARRAYS}
    arrays |= {n: np.asarray(data[n], dtype=np.float64) for n in _FLOAT_ARRAYS}
    return PhaseSamples(tenant=data["tenant"], phase=data["phase"], **arrays)


def _df(df: DegradationFactor) -> dict[str, Any]:
    return {
        "evidence": df.evidence.to_dict(),
        "on_inconclusive": df.on_inconclusive,
        "note": df.note,
    }


def _df_back(data: dict[str, Any]) -> DegradationFactor:
    return DegradationFactor(
        evidence=Evidence.from_dict(data["evidence"]),
        on_inconclusive=data["on_inconclusive"],
        note=data["note"],
    )


def _window_back(data: dict[str, Any]) -> PhaseWindow:
    return PhaseWindow(**(data | {"tenants": tuple(data["tenants"])}))


def _spec_back(data: dict[str, Any]) -> TenantSpec:
    return TenantSpec(**data)


def scenario_to_dict(result: ScenarioResult) -> dict[str, Any]:
    tenants = {}
    for name, t in result.tenants.items():
        tenants[name] = {
            "spec": dataclasses.asdict(t.spec),
            "solo": _phase(t.samples.solo),
            "shared": _phase(t.samples.shared),
            "meta": t.meta,
            "accounting": t.accounting,
            "confidence": t.confidence,
            "on_inconclusive": t.on_inconclusive,
            "sequential": [[p, clock, _df(df)] for (p, clock), df in t.sequential.items()],
            "arms": [[list(arm), _phase(ps)] for arm, ps in t.arms.items()],
        }
    return {
        "name": result.name,
        "device": result.device,
        "tenants": tenants,
        "windows": [dataclasses.asdict(w) for w in result.windows],
        "machine": result.machine,
        "backend": result.backend,
        "telemetry": None if result.telemetry is None else result.telemetry.to_json(),
        "checks": [c.to_dict() for c in result.checks],
        "background": list(result.background),
        "gpu_seconds": result.gpu_seconds,
        "stop_reason": result.stop_reason,
        "confidence": result.confidence,
        "started_at": result.started_at,
        "warnings": result.warnings,
        "comparisons": result.comparisons,
        "baseline_saved": result.baseline_saved,
    }


def scenario_from_dict(data: dict[str, Any]) -> ScenarioResult:
    tenants = {}
    for name, t in data["tenants"].items():
        samples = TenantSamples(name, _phase_back(t["solo"]), _phase_back(t["shared"]))
        tenants[name] = TenantResult(
            spec=_spec_back(t["spec"]),
            samples=samples,
            meta=t["meta"],
            accounting=t["accounting"],
            confidence=t["confidence"],
            on_inconclusive=t["on_inconclusive"],
            sequential={(float(p), clock): _df_back(df) for p, clock, df in t["sequential"]},
            arms={tuple(arm): _phase_back(ps) for arm, ps in t.get("arms", [])},
        )
    telemetry = None
    if data["telemetry"] is not None:
        from pytest_kts.telemetry import Telemetry

        telemetry = Telemetry.from_json(data["telemetry"])
    return ScenarioResult(
        name=data["name"],
        device=data["device"],
        tenants=tenants,
        windows=[_window_back(w) for w in data["windows"]],
        machine=data["machine"],
        backend=data["backend"],
        telemetry=telemetry,
        checks=[CheckOutcome.from_dict(c) for c in data["checks"]],
        background=tuple(data.get("background", ())),
        gpu_seconds=data["gpu_seconds"],
        stop_reason=data["stop_reason"],
        confidence=data["confidence"],
        started_at=data["started_at"],
        warnings=data["warnings"],
        comparisons=data["comparisons"],
        baseline_saved=data.get("baseline_saved"),
    )


def matrix_to_dict(m: MatrixResult) -> dict[str, Any]:
    return {
        "name": m.name,
        "device": m.device,
        "tenants": m.tenants,
        "solo": {k: _phase(v) for k, v in m.solo.items()},
        "shared": [[t, list(co), _phase(v)] for (t, co), v in m.shared.items()],
        "windows": [dataclasses.asdict(w) for w in m.windows],
        "machine": m.machine,
        "backend": m.backend,
        "gpu_seconds": m.gpu_seconds,
        "started_at": m.started_at,
        "confidence": m.confidence,
        "cut_phases": m.cut_phases,
        "rows": m.rows,
    }


def matrix_from_dict(data: dict[str, Any]) -> MatrixResult:
    return MatrixResult(
        name=data["name"],
        device=data["device"],
        tenants=list(data["tenants"]),
        solo={k: _phase_back(v) for k, v in data["solo"].items()},
        shared={(t, tuple(co)): _phase_back(v) for t, co, v in data["shared"]},
        windows=[_window_back(w) for w in data["windows"]],
        machine=data["machine"],
        backend=data["backend"],
        gpu_seconds=data["gpu_seconds"],
        started_at=data["started_at"],
        confidence=data["confidence"],
        cut_phases=int(data.get("cut_phases", 0)),
        rows=list(data.get("rows", [])),
    )


def dumps(results: list[ScenarioResult], matrices: list[MatrixResult]) -> str:
    """One worker's results as JSON text (builtin types only, as execnet requires)."""
    return json.dumps(
        {
            "format": FORMAT,
            "scenarios": [scenario_to_dict(r) for r in results],
            "matrices": [matrix_to_dict(m) for m in matrices],
        },
        default=_plain,
    )


def loads(text: str) -> tuple[list[ScenarioResult], list[MatrixResult]]:
    data = json.loads(text)
    if data.get("format") != FORMAT:
        raise ValueError(f"kts results of format {data.get('format')!r}; expected {FORMAT}")
    return (
        [scenario_from_dict(r) for r in data["scenarios"]],
        [matrix_from_dict(m) for m in data["matrices"]],
    )


def _plain(value: Any) -> Any:
    """numpy scalars and arrays, tuples inside metadata: as their builtin equivalents."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)
