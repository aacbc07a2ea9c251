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

from pytest_kts import protocol
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


def sample_from_row(fields: Sequence[str | None]) -> Sample:
    """One row of a samples CSV (in :data:`CSV_COLUMNS` order) as a Sample, checked as the
    protocol checks its lines; a ValueError says what is wrong (``ClockWentBackwards`` when the
    end is before the start)."""
    if len(fields) != len(CSV_COLUMNS) or any(f is None for f in fields):
        raise ValueError(
            f"{sum(f is not None for f in fields)} fields, expected {len(CSV_COLUMNS)}"
        )
    tenant, phase, rnd, i, start, end, host, device = (str(f) for f in fields)
    start_ns, end_ns = protocol._int(start, "start_ns"), protocol._int(end, "end_ns")
    if end_ns < start_ns:
        raise protocol.ClockWentBackwards("end_ns is before start_ns")
    return Sample(
        tenant=protocol.check_tenant_name(tenant),
        phase=protocol._phase(phase),
        round=protocol._int(rnd, "round"),
        iteration=protocol._int(i, "iteration"),
        start_ns=start_ns,
        end_ns=end_ns,
        host_ms=protocol._ms(host, "host_ms", optional=True),
        device_ms=protocol._ms(device, "device_ms", optional=True),
    )


def from_csv(text: str) -> dict[str, TenantSamples]:
    """Per-tenant arrays from a samples CSV; a bad row is a ValueError naming its line."""
    reader = csv.DictReader(io.StringIO(text))
    missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"samples CSV lacks columns {sorted(missing)}")
    records = []
    for row in reader:
        try:
            if None in row:  # more fields than the header
                raise ValueError(f"more than {len(CSV_COLUMNS)} fields")
            records.append(sample_from_row([row.get(c) for c in CSV_COLUMNS]))
        except ValueError as exc:
            raise ValueError(f"samples CSV line {reader.line_num}: {exc}") from None
    return group(records)


PHASE_CODES = {"solo": 0, "shared": 1, "": 2}  # 2: a v1 sample whose phase is not known yet


class SampleColumns:
    """Samples kept as typed columns (8 numbers each, no objects), in the order added.

    For reading logs of millions of lines in bounded memory: records are added in batches
    and :meth:`group` builds the same per-tenant arrays as :func:`group` does from records.
    """

    def __init__(self) -> None:
        from array import array

        self.names: dict[str, int] = {}
        self.tenant = array("i")
        self.phase = array("b")
        self.round = array("q")
        self.iteration = array("q")
        self.start_ns = array("q")
        self.end_ns = array("q")
        self.host_ms = array("d")
        self.device_ms = array("d")

    def __len__(self) -> int:
        return len(self.tenant)

    def add(self, records: Iterable[Sample]) -> None:
        names = self.names
        for r in records:
            code = names.setdefault(r.tenant, len(names))
            self.tenant.append(code)
            self.phase.append(PHASE_CODES[r.phase])
            self.round.append(r.round)
            self.iteration.append(r.iteration)
            self.start_ns.append(r.start_ns)
            self.end_ns.append(r.end_ns)
            self.host_ms.append(r.host_ms)
            self.device_ms.append(r.device_ms)

    def arrays(self) -> dict[str, np.ndarray]:
        """Views of the columns as numpy arrays (writable: phases and rounds get assigned)."""
        return {
            "tenant": np.frombuffer(self.tenant, dtype=np.int32),
            "phase": np.frombuffer(self.phase, dtype=np.int8),
            "round": np.frombuffer(self.round, dtype=np.int64),
            "iteration": np.frombuffer(self.iteration, dtype=np.int64),
            "start_ns": np.frombuffer(self.start_ns, dtype=np.int64),
            "end_ns": np.frombuffer(self.end_ns, dtype=np.int64),
            "host_ms": np.frombuffer(self.host_ms, dtype=np.float64),
            "device_ms": np.frombuffer(self.device_ms, dtype=np.float64),
        }

    def tenants(self, mask: np.ndarray | None = None) -> set[str]:
        codes = np.frombuffer(self.tenant, dtype=np.int32)
        present = set(np.unique(codes if mask is None else codes[mask]).tolist())
        return {name for name, code in self.names.items() if code in present}


def group_columns(stores: Iterable[SampleColumns]) -> dict[str, TenantSamples]:
    """Per-tenant, per-phase arrays from several column stores (unphased samples left out)."""
    parts: dict[tuple[str, int], list[dict[str, np.ndarray]]] = {}
    for store in stores:
        cols = store.arrays()
        for name, code in store.names.items():
            for phase in (0, 1):
                mask = (cols["tenant"] == code) & (cols["phase"] == phase)
                if mask.any():
                    parts.setdefault((name, phase), []).append(
                        {k: v[mask] for k, v in cols.items()}
                    )
    names = sorted({name for name, _ in parts})

    def phase_samples(name: str, phase: int) -> PhaseSamples:
        label = ("solo", "shared")[phase]
        chunks = parts.get((name, phase))
        if not chunks:
            return PhaseSamples.empty(name, label)
        c = {k: np.concatenate([ch[k] for ch in chunks]) for k in chunks[0]}
        order = np.lexsort((c["iteration"], c["round"], c["start_ns"]))
        return PhaseSamples(
            tenant=name,
            phase=label,
            round=c["round"][order],
            iteration=c["iteration"][order],
            start_ns=c["start_ns"][order],
            end_ns=c["end_ns"][order],
            host_ms=c["host_ms"][order],
            device_ms=c["device_ms"][order],
        )

    return {n: TenantSamples(n, phase_samples(n, 0), phase_samples(n, 1)) for n in names}
