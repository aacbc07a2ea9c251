"""Were the co-tenants of a shared phase really together? Pure checks shared by every backend.

Two questions, answered from what the workers reported (no I/O, no pytest, no cluster):

- *one GPU*: every worker prints its GPU UUID; tenants that saw different UUIDs did not contend
  (:func:`check_one_gpu`, :func:`verify_shared_phase`);
- *at the same time*: only the window in which every tenant was measuring counts
  (:func:`overlap_window`, :func:`trim_to_overlap`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pytest_kts.errors import ColocationError


class Timed(Protocol):
    """What the overlap needs of a sample: when it started and ended (epoch ns)."""

    @property
    def start_ns(self) -> int: ...

    @property
    def end_ns(self) -> int: ...


def check_one_gpu(uuids: Mapping[str, str | None], hint: str) -> None:
    """Raise :class:`ColocationError` when the tenants reported more than one GPU UUID.

    ``uuids`` maps tenant to the UUID it reported (``None``: none, e.g. a CPU run);
    ``hint`` says what to do next, in the backend's terms.
    """
    known = {u for u in uuids.values() if u}
    if len(known) > 1:
        listing = ", ".join(f"{t}: {u or '-'}" for t, u in sorted(uuids.items()))
        raise ColocationError(
            f"tenants ran on different GPUs ({listing}); a shared phase needs one GPU. {hint}"
        )


@dataclass
class Colocation:
    """What :func:`verify_shared_phase` found: a one-line status and notes for the report."""

    status: str
    notes: list[str] = field(default_factory=list)


def verify_shared_phase(
    round_: int,
    uuids: Mapping[str, str | None],
    where: Mapping[str, str],
    solo_uuids: Mapping[str, str],
    *,
    hint: str,
) -> Colocation:
    """Check one shared phase: all tenants on one GPU (else :class:`ColocationError`).

    ``where`` says, per tenant, where it ran beyond the UUID ("node n1, pod p1"); ``solo_uuids``
    the GPU each tenant's solo phase saw, to note solo and shared measured on different GPUs.
    No UUID at all (a CPU run) or from only some tenants is a note, not an error.
    """
    known = {t: u for t, u in uuids.items() if u}
    if len(set(known.values())) > 1:
        raise ColocationError(
            f"shared phase (round {round_}) ran on different GPUs: "
            + "; ".join(f"{t} on {uuids[t] or 'no GPU'} ({where.get(t, '?')})" for t in uuids)
            + f". Tenants on different GPUs do not contend, so this is no co-location "
            f"measurement. {hint}"
        )
    if not known:
        return Colocation(
            "not checked: no GPU UUID (CPU)",
            [
                f"round {round_}: co-location on one GPU not checked: no tenant reported a GPU "
                "UUID (CPU run)"
            ],
        )
    missing = sorted(set(uuids) - set(known))
    if missing:
        return Colocation(
            f"partial: no GPU UUID from {missing}",
            [f"round {round_}: co-location only partly checked: {missing} reported no GPU UUID"],
        )
    uuid_ = next(iter(known.values()))
    moved = {t: solo_uuids[t] for t in uuids if solo_uuids.get(t, uuid_) != uuid_}
    notes = []
    if moved:
        notes.append(
            f"round {round_}: the shared phase ran on {uuid_} but solo phases ran on {moved}: "
            "solo and shared were measured on different GPUs"
        )
    return Colocation(f"verified: all tenants on {uuid_}", notes)


def overlap_window(
    round_: int, spans: Mapping[str, tuple[int, int]], *, hint: str = ""
) -> tuple[int, int] | None:
    """The window (begin, end) in which every tenant measured; None with fewer than two.

    ``spans``: tenant -> (first sample's start, last sample's end). Tenants that never measured
    at the same time raise :class:`ColocationError`.
    """
    if len(spans) < 2:
        return None
    begin = max(b for b, _ in spans.values())
    end = min(e for _, e in spans.values())
    if begin >= end:
        raise ColocationError(
            f"shared phase (round {round_}): the tenants never measured at the same time: "
            + "; ".join(
                f"{t} {(b - begin) / 1e9:+.2f} s .. {(e - begin) / 1e9:+.2f} s"
                for t, (b, e) in spans.items()
            )
            + " (relative to the last start)"
            + (f"; {hint}" if hint else "")
        )
    return begin, end


def trim_to_overlap(
    round_: int, samples: Mapping[str, Sequence[Timed]], *, hint: str = ""
) -> tuple[dict[str, list[Timed]], tuple[int, int] | None]:
    """Each tenant's samples inside the window every tenant measured, and that window.

    With fewer than two tenants that measured, nothing is trimmed (window None).
    """
    spans = {
        t: (min(s.start_ns for s in ss), max(s.end_ns for s in ss))
        for t, ss in samples.items()
        if ss
    }
    window = overlap_window(round_, spans, hint=hint)
    if window is None:
        return {t: list(ss) for t, ss in samples.items()}, None
    begin, end = window
    kept = {
        t: [s for s in ss if s.start_ns >= begin and s.end_ns <= end] for t, ss in samples.items()
    }
    return kept, window


__all__ = [
    "Colocation",
    "check_one_gpu",
    "overlap_window",
    "trim_to_overlap",
    "verify_shared_phase",
]
