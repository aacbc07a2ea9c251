"""Samples per tenant and phase: the arrays that statistics and reports are computed from.

A :class:`PhaseSamples` is column arrays in time order, one row per iteration, built from
the protocol's :class:`~pytest_kts.protocol.Sample` records. It can be saved to and loaded
from CSV, so a run can be judged again offline.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pytest_kts.protocol import Sample

CLOCKS = ("host", "device")
CSV_COLUMNS = (
    "tenant", "phase", "round", "iteration", "start_ns", "end_ns", "host_ms", "device_ms",
)  # fmt: skip


@dataclass(frozen=True)
class PhaseSamples:
    """One tenant's iterations in one phase (all rounds), sorted by start time."""

    tenant: str
    phase: str
    round: np.ndarray  # int64
    iteration: np.ndarray  # int64
    start_ns: np.ndarray  # int64, epoch
    end_ns: np.ndarray  # int64, epoch
    host_ms: np.ndarray  # float64, nan where unknown
    device_ms: np.ndarray  # float64, nan where there is no device clock

    @classmethod
    def from_records(cls, tenant: str, phase: str, records: Iterable[Sample]) -> PhaseSamples:
        rows = sorted(
            (r for r in records if r.tenant == tenant and r.phase == phase),
            key=lambda r: (r.start_ns, r.round, r.iteration),
        )
        return cls(
            tenant=tenant,
            phase=phase,
            round=np.array([r.round for r in rows], dtype=np.int64),
            iteration=np.array([r.iteration for r in rows], dtype=np.int64),
            start_ns=np.array([r.start_ns for r in rows], dtype=np.int64),
            end_ns=np.array([r.end_ns for r in rows], dtype=np.int64),
            host_ms=np.array([r.host_ms for r in rows], dtype=np.float64),
            device_ms=np.array([r.device_ms for r in rows], dtype=np.float64),
        )

    @classmethod
    def empty(cls, tenant: str, phase: str) -> PhaseSamples:
        return cls.from_records(tenant, phase, ())

    def __len__(self) -> int:
        return int(self.host_ms.shape[0])

    def latency(self, clock: str) -> np.ndarray:
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
        return self.host_ms if clock == "host" else self.device_ms

    def has_clock(self, clock: str) -> bool:
        values = self.latency(clock)
        return bool(values.size) and bool(np.isfinite(values).any())

    def segments(self) -> np.ndarray:
        """Round label per sample: rounds are separate runs of the phase, never one series."""
        return self.round

    def busy_seconds(self) -> float:
        """Wall time covered by the phase, summed over rounds (first start to last end each)."""
        total = 0.0
        for r in np.unique(self.round):
            mask = self.round == r
            total += (self.end_ns[mask].max() - self.start_ns[mask].min()) / 1e9
        return total

    def throughput(self) -> float:
        """Iterations per second of wall time in the phase (the study's throughput proxy)."""
        seconds = self.busy_seconds()
        return len(self) / seconds if seconds > 0 else math.nan

    def rows(self) -> Iterable[tuple[object, ...]]:
        for k in range(len(self)):
            yield (
                self.tenant,
                self.phase,
                int(self.round[k]),
                int(self.iteration[k]),
                int(self.start_ns[k]),
                int(self.end_ns[k]),
                _csv_ms(self.host_ms[k]),
                _csv_ms(self.device_ms[k]),
            )


def _csv_ms(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.6f}"


@dataclass(frozen=True)
class TenantSamples:
    tenant: str
    solo: PhaseSamples
    shared: PhaseSamples

    def phase(self, phase: str) -> PhaseSamples:
        if phase == "solo":
            return self.solo
        if phase == "shared":
            return self.shared
        raise ValueError(f"phase must be 'solo' or 'shared', got {phase!r}")


def group(
    records: Sequence[Sample], tenants: Iterable[str] | None = None
) -> dict[str, TenantSamples]:
    """Split protocol records into per-tenant, per-phase arrays."""
    names = list(tenants) if tenants is not None else sorted({r.tenant for r in records})
    return {
        t: TenantSamples(
            t,
            PhaseSamples.from_records(t, "solo", records),
            PhaseSamples.from_records(t, "shared", records),
        )
        for t in names
    }


def to_csv(tenants: Iterable[TenantSamples]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for t in tenants:
        for phase in (t.solo, t.shared):
            writer.writerows(phase.rows())
    return out.getvalue()


def from_csv(text: str) -> dict[str, TenantSamples]:
    reader = csv.DictReader(io.StringIO(text))
    missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"samples CSV lacks columns {sorted(missing)}")
    records = [
        Sample(
            tenant=row["tenant"],
            phase=row["phase"],
            round=int(row["round"]),
            iteration=int(row["iteration"]),
            start_ns=int(row["start_ns"]),
            end_ns=int(row["end_ns"]),
            host_ms=float(row["host_ms"]) if row["host_ms"] else math.nan,
            device_ms=float(row["device_ms"]) if row["device_ms"] else math.nan,
        )
        for row in reader
    ]
    return group(records)
