"""DCGM through Prometheus (cluster mode): :func:`fetch_dcgm` asks a Prometheus that scrapes
dcgm-exporter for the profiling fields over each phase window."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from pytest_kts.telemetry.record import WindowLike, _describe

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
