"""The degradation factor (shared / solo percentile) with a confidence interval and a verdict.

``DF = p(shared) / p(solo)`` at one percentile and one clock. A gate compares it with a
threshold, and the comparison follows the *interval*, not the point estimate:

* ``pass``  - the whole interval lies below the threshold;
* ``fail``  - the whole interval lies above it;
* ``inconclusive`` - the interval straddles it, or there are too few samples for any claim.

``assert df < 1.3`` therefore fails only on evidence. What an inconclusive comparison does is
the ``on_inconclusive`` policy (default ``"warn"``: the assertion holds and a
:class:`KtsInconclusiveWarning` says so). A :class:`DegradationFactor` is a frozen value: its
policy is fixed when it is made (``degradation(..., on_inconclusive=)``, or by ``assert_df``
from ``--kts-inconclusive``; :meth:`DegradationFactor.with_policy` gives a copy with another),
and the comparison operators are the one place where the policy is applied. Method and
evidence: ``docs/statistics.md``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np

from pytest_kts.errors import KtsError
from pytest_kts.evidence import Evidence, df_evidence, prepare
from pytest_kts.thresholds import check_threshold

__all__ = [
    "POLICIES",
    "DegradationFactor",
    "InconclusiveError",
    "KtsInconclusiveWarning",
    "degradation",
]

POLICIES = ("warn", "fail", "skip", "error")


class KtsInconclusiveWarning(UserWarning):
    """A degradation gate could not decide with the samples it had; the assertion held."""


class InconclusiveError(KtsError):
    """A degradation gate could not decide and ``on_inconclusive="error"`` was asked for."""


def _is_threshold(x: object) -> TypeGuard[float | np.number[Any]]:
    """A number a DF compares with (a bool is not one: ``df < True`` is a mistake)."""
    return not isinstance(x, bool) and isinstance(x, (int, float, np.number))


def _fmt_p(p: float) -> str:
    return f"p{p:g}"


def interval_text(
    lo: float | None, hi: float | None, digits: int = 2, *, significant: bool = False
) -> str:
    """``[lo, hi]``; where an end does not exist, the end that does in words: ``(≥ 1.90)``
    (no upper bound yet), ``(≤ 13.59)`` (no lower bound yet), ``(no bound yet)``. Never a 0 or
    an infinity that reads as a value. ``significant``: ``digits`` significant figures."""
    lo_ok = lo is not None and math.isfinite(lo) and lo > 0
    hi_ok = hi is not None and math.isfinite(hi)

    def num(x: float) -> str:
        return f"{x:#.{digits}g}" if significant else f"{x:.{digits}f}"

    if lo_ok and hi_ok:
        return f"[{num(lo)}, {num(hi)}]"  # type: ignore[arg-type]
    if lo_ok:
        return f"(≥ {num(lo)})"  # type: ignore[arg-type]
    if hi_ok:
        return f"(≤ {num(hi)})"  # type: ignore[arg-type]
    return "(no bound yet)"


@dataclass(frozen=True, eq=False)
class DegradationFactor:
    """Ratio of the shared to the solo percentile, its interval, and how it was obtained.

    A frozen value around one :class:`~pytest_kts.evidence.Evidence` record (``evidence``):
    every figure below is read from it. ``ci`` is the interval the verdict uses, at the look's
    two-sided level ``alpha``: ``1 - confidence`` for one look, less at an early look of a
    sequential plan (a repeated confidence interval: over all looks together the chance of a
    false fail stays at most ``(1 - confidence) / 2``).
    """

    evidence: Evidence
    on_inconclusive: str = "warn"
    note: str = ""  # how this look came about (a sequential plan's look), for the details
    tenant: str = ""  # whose DF: the failure message names it
    # Called with (op, threshold, verdict, held) on every comparison: the report says what
    # each test asserted and whether it held (set by results.TenantResult).
    record: Callable[[str, float, str, bool], None] | None = field(
        default=None, repr=False, compare=False
    )
    # Extra lines for explain(), supplied by whoever holds the samples (results.TenantResult:
    # wait vs execution and co-tenant attribution); failures in it never hide the verdict.
    context: Callable[[], list[str]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.on_inconclusive not in POLICIES:
            raise ValueError(
                f"on_inconclusive must be one of {POLICIES}, got {self.on_inconclusive!r}"
            )

    # -- the record's figures --------------------------------------------------------------
    @property
    def value(self) -> float:
        return self.evidence.estimate

    @property
    def ci(self) -> tuple[float, float]:
        return self.evidence.ci

    @property
    def p(self) -> float:
        return self.evidence.p

    @property
    def confidence(self) -> float:
        return self.evidence.confidence

    @property
    def clock(self) -> str:
        return self.evidence.clock

    @property
    def alpha(self) -> float:
        return self.evidence.level

    @property
    def n_solo(self) -> int:
        return self.evidence.solo.kept

    @property
    def n_shared(self) -> int:
        return self.evidence.shared.kept

    @property
    def trimmed_solo(self) -> int:
        return self.evidence.solo.trimmed

    @property
    def trimmed_shared(self) -> int:
        return self.evidence.shared.trimmed

    @property
    def dropped_solo(self) -> int:
        return self.evidence.solo.dropped

    @property
    def dropped_shared(self) -> int:
        return self.evidence.shared.dropped

    @property
    def solo_quantile(self) -> float:
        return self.evidence.solo.quantile

    @property
    def shared_quantile(self) -> float:
        return self.evidence.shared.quantile

    @property
    def reason(self) -> str | None:
        return self.evidence.reason

    @property
    def method(self) -> str:
        return self.evidence.method() + (f"; {self.note}" if self.note else "")

    def with_policy(self, on_inconclusive: str) -> DegradationFactor:
        """This DF with another inconclusive policy (a copy; this one is unchanged)."""
        if on_inconclusive == self.on_inconclusive:
            return self
        return dataclasses.replace(self, on_inconclusive=on_inconclusive)

    @property
    def bounded(self) -> bool:
        """Whether the verdict had an interval with two ends. A phase short of its sample
        floor removes one end (``ci`` holds 0 or infinity there, and ``reason`` says why)."""
        lo, hi = self.ci
        return lo > 0 and math.isfinite(hi)

    def interval(self, digits: int = 2, *, significant: bool = False) -> str:
        """The interval the verdict used, as text: only the ends that exist, said in words
        where one is missing ("(≤ 13.6)", "(≥ 1.94)", "(no bound yet)")."""
        lo, hi = self.ci
        return interval_text(lo, hi, digits, significant=significant)

    # -- verdict -------------------------------------------------------------------------------

    def verdict(self, threshold: float) -> str:
        """``"pass"`` (CI below), ``"fail"`` (CI above) or ``"inconclusive"``."""
        t = float(threshold)
        # A bound that the samples cannot give is 0 or infinity (see ``reason``), so the
        # interval alone decides.
        lo, hi = self.ci
        if hi < t:
            return "pass"
        if lo > t:
            return "fail"
        return "inconclusive"

    def _compare(self, op: str, threshold: float | np.number[Any]) -> bool:
        t = check_threshold(threshold)  # NaN, inf, 0 or below: a ConfigError, not a verdict
        v = self.verdict(t)
        if v == "inconclusive":
            held = self._inconclusive(op, t)
        elif op in ("<", "<="):
            held = v == "pass"
        else:
            held = v == "fail"  # ">" / ">=": holds when the whole interval lies above it
        if self.record is not None:
            self.record(op, t, v, held)
        return held

    def _inconclusive(self, op: str, t: float) -> bool:
        """The one place where the inconclusive policy is applied."""
        msg = self._inconclusive_message(op, t)
        policy = self.on_inconclusive
        if policy == "warn":
            # No alarm without evidence: the comparison holds, but visibly.
            warnings.warn(msg, KtsInconclusiveWarning, stacklevel=4)
            return True
        if policy == "fail":
            return False
        if policy == "skip":
            import pytest  # lazy: this module must stay importable without pytest

            pytest.skip(msg)
        raise InconclusiveError(msg)

    def _inconclusive_message(self, op: str, t: float) -> str:
        why = self.reason or (
            f"the {self.evidence.label()} interval contains the threshold {t:g}; more samples "
            "would narrow it"
        )
        return f"inconclusive: {self!r} {op} {t:g}: {why}"

    def __lt__(self, other: object) -> bool:
        if not _is_threshold(other):
            return NotImplemented
        return self._compare("<", other)

    def __le__(self, other: object) -> bool:
        if not _is_threshold(other):
            return NotImplemented
        return self._compare("<=", other)

    def __gt__(self, other: object) -> bool:
        if not _is_threshold(other):
            return NotImplemented
        return self._compare(">", other)

    def __ge__(self, other: object) -> bool:
        if not _is_threshold(other):
            return NotImplemented
        return self._compare(">=", other)

    def __bool__(self) -> bool:
        raise TypeError(
            "a DegradationFactor has no truth value: compare it with a threshold, "
            "e.g. `assert assert_df(tenant, p=99) < 1.3`"
        )

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        return (
            f"DF {_fmt_p(self.p)} ({self.clock}) {self.value:.2f} {self.interval()} "
            f"n={self.n_solo}/{self.n_shared}"
        )

    __str__ = __repr__

    # -- explanation for pytest_assertrepr_compare ----------------------------------------------

    def headline(self, threshold: float | None = None) -> str:
        """The verdict in one line, short enough for pytest's short summary: "DF p99 10.3
        [7.47, 14.2] > 1.3 at 95% confidence: fft's p99 0.18 -> 1.86 ms (host clock)"."""
        ev = self.evidence
        pn = _fmt_p(self.p)
        head = f"DF {pn} {self.value:#.3g} {self.interval(3, significant=True)}"
        if threshold is not None:
            t = float(threshold)
            v = self.verdict(t)
            rel = {"fail": ">", "pass": "<"}.get(v, "vs")
            head += f" {rel} {t:g} at {ev.label()} confidence" + (
                " (undecided)" if v == "inconclusive" else ""
            )
        who = f"{self.tenant}'s " if self.tenant else ""
        return (
            f"{head}: {who}{pn} {self.solo_quantile:.3g} -> {self.shared_quantile:.3g} ms "
            f"({self.clock} clock)"
        )

    def explain(self, op: str, threshold: float, *, verbose: bool = False) -> list[str]:
        """Lines saying what was measured and why the comparison came out as it did.

        The verdict with its numbers first, then why (wait versus execution, who took the
        tail and by which method), then the samples; the method and the sequential plan last,
        and only with ``verbose`` (pytest's ``-vv``).
        """
        t = float(threshold)
        v = self.verdict(t)
        ev = self.evidence
        lines = [self.headline(t)]
        if self.context is not None:
            try:
                why = self.context()
            except Exception as exc:  # an explanation must not turn a verdict into an error
                why = [f"(no attribution: {type(exc).__name__}: {exc})"]
            lines += [f"why: {why[0]}", *why[1:]] if why else []
        label = ev.label()
        holds = self._holds(op, v)
        if v == "pass":
            what = f"pass: the whole {label} interval lies below {t:g}"
        elif v == "fail":
            what = f"fail: the whole {label} interval lies above {t:g}"
        else:
            what = (
                f"undecided: the {label} interval does not exclude {t:g} "
                f"(on_inconclusive={self.on_inconclusive!r})"
            )
        lines.append(f"verdict: {what}, so `DF {op} {t:g}` {'holds' if holds else 'does not hold'}")
        so, sh = ev.solo, ev.shared
        lines.append(
            f"samples per phase: solo {so.kept} / shared {sh.kept} after warmup (of "
            f"{so.measured} / {sh.measured} measured), {ev.units} {ev.unit_kind}"
        )
        if self.reason:
            lines.append(f"missing end: {self.reason}")
        look = ev.look_note()
        if verbose:
            if look:
                lines.append(look)
            lines.append(f"method: {self.method}")
        elif look or self.method:
            lines.append("(pytest -vv adds the method and the sequential plan)")
        return lines

    def _holds(self, op: str, v: str) -> bool:
        if v == "inconclusive":
            return self.on_inconclusive == "warn"
        return (v == "pass") if op in ("<", "<=") else (v == "fail")


# ---------------------------------------------------------------------------------------------


def degradation(
    solo: Sequence[float] | np.ndarray,
    shared: Sequence[float] | np.ndarray,
    p: float = 99,
    confidence: float = 0.95,
    *,
    clock: str = "host",
    solo_segments: Sequence[object] | np.ndarray | None = None,
    shared_segments: Sequence[object] | np.ndarray | None = None,
    paired: bool = True,
    trim: bool = True,
    alpha: float | None = None,
    on_inconclusive: str = "warn",
    note: str = "",
) -> DegradationFactor:
    """Degradation factor ``p(shared) / p(solo)`` with an interval that holds for bursty tails
    and round-to-round drift.

    ``solo``/``shared`` are per-iteration latencies (ms) in time order; ``*_segments`` their
    round labels. Each round's warmup is trimmed by MSER-5 (``trim=False`` keeps it). With
    ``paired`` (the default), solo and shared rounds of the same label ran next to each other
    in time and are drawn together by the pair bootstrap, so drift they share cancels; pass
    ``paired=False`` for phases from separate runs (a baseline against today's run).
    Without labels, each phase is one run and is cut into contiguous batches.

    The two-sided interval at level ``1 - alpha`` (``alpha`` defaults to ``1 - confidence``)
    is on ``log DF``: a bootstrap over whole round pairs with Student's t, each end at least a
    within-round bound from the order statistics inflated for how the tail's exceedances
    cluster. Below a phase's sample floor (independent samples, counted with the extremal
    index of its exceedances) the end that needs it is missing and ``reason`` says how many
    more samples would bring it. Deterministic. ``docs/statistics.md`` has the evidence.
    """
    if not 0.0 < p < 100.0:
        raise ValueError(f"p must be in (0, 100), got {p}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a = 1.0 - confidence if alpha is None else float(alpha)
    if not 0.0 <= a < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    so = prepare(solo, solo_segments, trim=trim, name="solo")
    sh = prepare(shared, shared_segments, trim=trim, name="shared")
    evidence = df_evidence(
        so, sh, p=float(p), confidence=float(confidence), level=a, clock=clock, paired=paired
    )
    return DegradationFactor(evidence=evidence, on_inconclusive=on_inconclusive, note=note)
