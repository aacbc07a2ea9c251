"""Who took my tail: wait versus execution per iteration, and which co-tenant was running.

One file on purpose: the wait split and the overlap answer read the same tail and body of
the same samples, and the limits of overlap (what it cannot identify, and the experiment it
then suggests) are stated next to the arithmetic they guard. The causal answer, by leaving
co-tenants out, is ``causal.py``.

Pure functions of the sample arrays (no I/O, no pytest, no torch), so a saved run is
attributed offline exactly as a live one. See ``docs/attribution.md`` for the method.

Wait versus execution
    Per iteration, ``execution = device`` (the CUDA event time of the work) and
    ``wait = host - device - launch``, where ``launch`` is the fixed cost of issuing the step
    and observing its completion when nobody else is there: the median of ``host - device`` in
    the solo phase, stated with every split. Negative waits (noise around the fixed cost) are
    clipped to zero. On the CPU there is no device clock and no split: none is invented.

Tail and body
    The *tail* is the shared-phase iterations whose host latency is above the solo p99 of the
    same tenant; the *body* is every other shared-phase iteration. Growth of the tail is
    measured against the solo median of each part.

Co-tenant attribution
    A co-tenant *overlaps* an iteration when one of its iterations had work in flight during
    it: its ``[start_ns, end_ns]`` host interval (launch to observed completion, on the common
    epoch clock) intersects the iteration's. For each co-tenant: the share of tail iterations
    it overlapped, the same share among body iterations (its baseline: how often it is simply
    there), their ratio (the *lift*), the excess latency of the tail iterations it overlapped,
    and the *attributable share* ``(tail - body) / (1 - body)`` of the mean fraction of an
    iteration during which it was busy: the part of the tail its presence explains beyond
    chance. Busy fractions, not counts, decide: a slow iteration is longer and so meets every
    neighbour more often, guilty or not. A co-tenant that is busy all the time overlaps every
    iteration alike and cannot be told apart from the background by overlap: it is reported
    as not identifiable by overlap, and leaving it out (``kts.run(..., explain=True)``,
    ``causal.py``) answers instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from pytest_kts.samples import PhaseSamples, TenantSamples
from pytest_kts.stats import percentile

# Evidence below this (a one-sided binomial z of the tail's overlap against the body's rate)
# names nobody: a co-tenant overlapping 3 of 5 tail iterations by chance is not to blame.
Z_BLAME = 2.0
# Blame also needs an effect worth naming: a co-tenant busy during 1% of ordinary iterations
# and 2% of slow ones has a lift of 2 and explains nothing a user should act on.
MIN_SHARE = 0.1
# A co-tenant busy during this much of the ordinary iterations is there all the time: its
# overlap with the tail cannot differ from its overlap with anything, so overlap cannot say
# whether it is to blame (a batch job that never sleeps). Only removing it can.
BODY_BUSY_MAX = 0.9
EXPLAIN_HINT = (
    "kts.run(..., explain=True) measures it by leaving each co-tenant out in turn "
    "(done by itself when an SLO check fails)"
)
# A tail is only a tail when it outgrew what the solo percentile lets through by definition
# (1% of iterations above the p99): at least this many times the odds of that (about twice
# the share at p99 and p95; two in three iterations above the solo median at p50, which twice
# the share, 100%, could never reach), and this many iterations.
TAIL_EXCESS = 2.0
MIN_TAIL = 5
# Below this fraction of the solo execution median, the solo wait is zero for a DF's purpose.
WAIT_FLOOR = 0.01
NO_DEVICE_CLOCK = (
    "no device clock (CPU run or no CUDA events): wait and execution cannot be told apart"
)


# -- wait versus execution ------------------------------------------------------------------------


def launch_cost(solo_host: np.ndarray, solo_device: np.ndarray) -> float:
    """The fixed cost outside the device clock: median of ``host - device`` in the solo phase."""
    gap = np.asarray(solo_host, dtype=np.float64) - np.asarray(solo_device, dtype=np.float64)
    gap = gap[np.isfinite(gap)]
    return float(np.median(gap)) if gap.size else math.nan


def wait_exec(
    host: np.ndarray, device: np.ndarray, launch_ms: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(wait, execution)`` per iteration, ms; nan where either clock is missing."""
    host = np.asarray(host, dtype=np.float64)
    device = np.asarray(device, dtype=np.float64)
    wait = np.maximum(host - device - launch_ms, 0.0)
    wait[~np.isfinite(host - device)] = np.nan
    return wait, device.copy()


def tail_grew(tail_n: int, n: int, p: float) -> bool:
    """More shared iterations above the solo ``p``-th percentile than chance puts there: the
    odds of being above it at least ``TAIL_EXCESS`` times the ``(100 - p) / p`` of no change."""
    if tail_n < MIN_TAIL or n <= 0:
        return False
    if tail_n >= n:
        return True
    return tail_n / (n - tail_n) > TAIL_EXCESS * (100.0 - p) / p


def _pct(x: np.ndarray, p: float) -> float:
    x = x[np.isfinite(x)]
    return percentile(x, p) if x.size else math.nan


@dataclass(frozen=True)
class PartStats:
    """p50 and p99 of wait and execution in one phase."""

    n: int
    wait_p50: float
    wait_p99: float
    exec_p50: float
    exec_p99: float


@dataclass(frozen=True)
class WaitSplit:
    """Wait versus execution for one tenant: per phase, and in the shared tail."""

    launch_ms: float  # the fixed cost subtracted from every iteration
    launch_source: str
    solo: PartStats
    shared: PartStats
    threshold_ms: float  # solo host p-th percentile: shared iterations above it are the tail
    tail_n: int
    grew: bool  # the tail outgrew chance (see tail_grew); no split is claimed otherwise
    wait_share: float  # of the tail's growth over the solo medians; nan without growth
    exec_share: float
    df_wait: float  # shared p99 / solo p99 of the part (point estimates)
    df_exec: float
    p: float = 99.0  # the percentile whose solo value draws the tail's line

    def sentence(self) -> str:
        if not self.grew:
            return (
                f"no tail growth to split ({self.tail_n} shared iterations above the solo "
                f"p{self.p:g}, no more than chance puts there)"
            )
        if not math.isfinite(self.wait_share):
            return f"{self.tail_n} tail iteration(s), but neither part grew over its solo median"
        return (
            f"tail growth is {100 * self.wait_share:.0f}% waiting for the GPU, "
            f"{100 * self.exec_share:.0f}% slower execution"
        )

    def dominant(self) -> str | None:
        if not self.grew or not math.isfinite(self.wait_share):
            return None
        return "waiting" if self.wait_share >= 0.5 else "execution"

    def to_dict(self) -> dict[str, object]:
        return _jsonable(
            {
                "launch_ms": self.launch_ms,
                "launch_source": self.launch_source,
                "solo": self.solo.__dict__,
                "shared": self.shared.__dict__,
                "threshold_ms": self.threshold_ms,
                "tail_n": self.tail_n,
                "tail_grew": self.grew,
                "wait_share": self.wait_share,
                "exec_share": self.exec_share,
                "df_wait_p99": self.df_wait,
                "df_exec_p99": self.df_exec,
                "sentence": self.sentence(),
            }
        )


def _parts(phase: PhaseSamples, launch_ms: float) -> tuple[np.ndarray, np.ndarray, PartStats]:
    wait, ex = wait_exec(phase.host_ms, phase.device_ms, launch_ms)
    ok = np.isfinite(wait) & np.isfinite(ex)
    stats = PartStats(
        n=int(ok.sum()),
        wait_p50=_pct(wait, 50),
        wait_p99=_pct(wait, 99),
        exec_p50=_pct(ex, 50),
        exec_p99=_pct(ex, 99),
    )
    return wait, ex, stats


def split_wait(samples: TenantSamples, p: float = 99, launch_ms: float | None = None) -> WaitSplit:
    """Wait versus execution for one tenant. Raises ValueError without a device clock.

    ``launch_ms`` states the fixed cost; by default it is measured in the solo phase.
    """
    solo, shared = samples.solo, samples.shared
    if not (solo.has_clock("device") and shared.has_clock("device")):
        raise ValueError(NO_DEVICE_CLOCK)
    source = "stated"
    if launch_ms is None:
        launch_ms = launch_cost(solo.host_ms, solo.device_ms)
        source = "median of host - device in the solo phase"
    _, _, s_stats = _parts(solo, launch_ms)
    h_wait, h_exec, h_stats = _parts(shared, launch_ms)
    threshold = _pct(solo.host_ms, p)
    tail = shared.host_ms > threshold
    tail &= np.isfinite(h_wait) & np.isfinite(h_exec)
    grow_wait = float(np.sum(h_wait[tail] - s_stats.wait_p50))
    grow_exec = float(np.sum(h_exec[tail] - s_stats.exec_p50))
    gw, ge = max(grow_wait, 0.0), max(grow_exec, 0.0)
    total = gw + ge
    return WaitSplit(
        launch_ms=launch_ms,
        launch_source=source,
        solo=s_stats,
        shared=h_stats,
        threshold_ms=threshold,
        tail_n=int(tail.sum()),
        grew=tail_grew(int(tail.sum()), h_stats.n, p),
        wait_share=gw / total if total > 0 else math.nan,
        exec_share=ge / total if total > 0 else math.nan,
        # A solo wait that is all but zero makes any shared wait an "infinite" DF: say nothing.
        df_wait=_ratio(h_stats.wait_p99, s_stats.wait_p99)
        if s_stats.wait_p99 > WAIT_FLOOR * s_stats.exec_p50
        else math.nan,
        df_exec=_ratio(h_stats.exec_p99, s_stats.exec_p99),
        p=float(p),
    )


def _ratio(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return math.nan
    return a / b


# -- co-tenant attribution ------------------------------------------------------------------------


def busy_union(start_ns: np.ndarray, end_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, sorted intervals covering every ``[start, end]`` given (touching ones merge)."""
    start = np.asarray(start_ns, dtype=np.int64)
    end = np.asarray(end_ns, dtype=np.int64)
    if start.size == 0:
        return start.copy(), end.copy()
    order = np.argsort(start, kind="stable")
    start, end = start[order], end[order]
    reach = np.maximum.accumulate(end)
    # A new block starts where an interval begins after everything before it has ended.
    new = np.ones(start.size, dtype=bool)
    new[1:] = start[1:] > reach[:-1]
    idx = np.flatnonzero(new)
    block_end = np.maximum.reduceat(end, idx)
    return start[idx], block_end


def overlaps(
    start_ns: np.ndarray, end_ns: np.ndarray, busy: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Per interval ``[start, end]``: did any busy interval intersect it (a shared instant counts
    not: touching ends are one finishing as the other begins)."""
    b_start, b_end = busy
    start = np.asarray(start_ns, dtype=np.int64)
    end = np.asarray(end_ns, dtype=np.int64)
    if b_start.size == 0:
        return np.zeros(start.size, dtype=bool)
    # The first busy block that ends after this interval starts; it overlaps if it began before
    # this interval ended. Blocks are disjoint and sorted, so that one block decides.
    k = np.searchsorted(b_end, start, side="right")
    inside = k < b_start.size
    hit = np.zeros(start.size, dtype=bool)
    hit[inside] = b_start[k[inside]] < end[inside]
    return hit


def busy_within(
    start_ns: np.ndarray, end_ns: np.ndarray, busy: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Per interval ``[start, end]``: the fraction of it during which ``busy`` was busy."""
    b_start, b_end = busy
    start = np.asarray(start_ns, dtype=np.int64)
    end = np.asarray(end_ns, dtype=np.int64)
    if b_start.size == 0:
        return np.zeros(start.size)
    length = (b_end - b_start).astype(np.float64)
    before = np.concatenate(([0.0], np.cumsum(length)))

    def busy_before(t: np.ndarray) -> np.ndarray:
        k = np.searchsorted(b_start, t, side="right")  # blocks that began by t
        last = np.maximum(k - 1, 0)
        partial = np.clip(t - b_start[last], 0, length[last]) * (k > 0)
        busy: np.ndarray = before[last] * (k > 0) + partial
        return busy

    span = (end - start).astype(np.float64)
    covered = busy_before(end) - busy_before(start)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(span > 0, covered / np.where(span > 0, span, 1), 0.0)


def device_intervals(phase: PhaseSamples) -> tuple[np.ndarray, np.ndarray]:
    """Where each iteration's work ran on the GPU, approximately: the device time before the
    observed completion. Iterations without a device clock are left out."""
    ok = np.isfinite(phase.device_ms)
    end = phase.end_ns[ok]
    return end - np.round(phase.device_ms[ok] * 1e6).astype(np.int64), end


@dataclass(frozen=True)
class Blame:
    """One co-tenant's overlap with a tenant's tail, against its overlap with the body.

    Counts (``tail_overlap``, ``body_overlap``, ``lift``) say how often it was there at all.
    A slow iteration is longer, so it meets *any* neighbour more often; the busy fractions
    (how much of each iteration the co-tenant had work in flight) do not grow with length for
    an innocent neighbour, so the share and the evidence are computed from them.
    """

    cotenant: str
    tail_overlap: float  # share of tail iterations it had work in flight during
    body_overlap: float  # the same share among ordinary (body) iterations
    lift: float  # tail_overlap / body_overlap (inf when it never overlapped the body)
    tail_busy: float  # mean fraction of a tail iteration during which it was busy
    body_busy: float  # the same for body iterations
    share: float  # attributable share: (tail_busy - body_busy) / (1 - body_busy), in [0, 1]
    excess_ms: float  # summed excess (host - solo p50) of the tail iterations it overlapped
    z: float  # evidence: Welch z of tail_busy against body_busy
    clock: str  # "host" intervals (in flight) or "device" intervals (executing)
    why_not: str | None = None  # set when overlap cannot tell: "busy in 98% of ..."

    @property
    def identifiable(self) -> bool:
        """Whether overlap can say anything about this co-tenant (it has ordinary iterations
        to compare with, and is not busy during nearly all of them)."""
        return self.why_not is None

    @property
    def blamed(self) -> bool:
        return (
            self.identifiable
            and math.isfinite(self.z)
            and self.z >= Z_BLAME
            and self.share >= MIN_SHARE
        )

    def cell(self) -> str:
        if not self.identifiable:
            return f"{self.cotenant}: not identifiable by overlap"
        lift = "inf" if math.isinf(self.lift) else f"{self.lift:.1f}x"
        return f"{self.cotenant} {100 * self.share:.0f}% (lift {lift})"

    def to_dict(self) -> dict[str, object]:
        return _jsonable(
            {**self.__dict__, "blamed": self.blamed, "identifiable": self.identifiable}
        )


@dataclass(frozen=True)
class Attribution:
    """Which co-tenants were running during a tenant's slow shared iterations."""

    tenant: str
    clock: str
    threshold_ms: float  # solo host p-th percentile of the tenant
    tail_n: int
    body_n: int
    grew: bool  # the tail outgrew chance: nobody is blamed otherwise
    blames: tuple[Blame, ...] = field(default_factory=tuple)  # most to blame first
    # Per tail iteration, for plots: start/end ns and which co-tenants overlapped it.
    tail_start_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    tail_end_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    p: float = 99.0  # the percentile whose solo value draws the tail's line

    method = "overlap"

    def shares(self) -> dict[str, float]:
        """Attributable share of the tail per co-tenant, e.g. ``{"gemm": 0.81, "embed": 0.0}``.

        Only co-tenants that overlap can judge (see :attr:`not_identifiable`): never NaN.
        A team's gate: ``assert max(result["fft"].attribution().shares().values()) <= 0.5``.
        """
        return {b.cotenant: b.share for b in self.blames if b.identifiable}

    @property
    def not_identifiable(self) -> tuple[Blame, ...]:
        """Co-tenants overlap cannot judge (busy all the time, or no ordinary iterations)."""
        return tuple(b for b in self.blames if not b.identifiable)

    def __getitem__(self, cotenant: str) -> Blame:
        for b in self.blames:
            if b.cotenant == cotenant:
                return b
        raise KeyError(cotenant)

    def top(self) -> Blame | None:
        """The co-tenant most to blame, if the tail grew and the evidence names one.

        ``None`` while any co-tenant cannot be judged by overlap: the one overlap cannot see
        may be the cause, and the next candidate is not named in its place.
        """
        if not self.grew or self.not_identifiable:
            return None
        return next((b for b in self.blames if b.blamed), None)

    def cell(self) -> str:
        if not self.grew:
            return "no tail growth"
        hidden = self.not_identifiable
        if hidden:
            return f"not identifiable by overlap ({', '.join(b.cotenant for b in hidden)})"
        top = self.top()
        return top.cell() if top is not None else "nobody clearly"

    def sentence(self) -> str:
        if not self.grew:
            return (
                f"{self.tenant}: {self.tail_n} shared iteration(s) above the solo p{self.p:g} "
                f"({self.threshold_ms:.4g} ms, host clock), no more than chance: no tail to "
                "attribute"
            )
        head = (
            f"{self.tenant}'s tail ({self.tail_n} shared iterations above the solo "
            f"p{self.p:g} of {self.threshold_ms:.4g} ms, host clock) overlapped"
        )
        parts = []
        for b in self.blames:
            if b.identifiable:
                parts.append(
                    f"{b.cotenant} in {100 * b.tail_overlap:.0f}% (vs {100 * b.body_overlap:.0f}%"
                    f" of ordinary iterations, lift {b.lift:.1f}x, attributable "
                    f"{100 * b.share:.0f}%)"
                )
            else:
                parts.append(f"{b.cotenant}: not identifiable by overlap, {b.why_not}")
        hidden = self.not_identifiable
        if hidden:
            verdict = f"overlap cannot say who took it; {EXPLAIN_HINT}"
        else:
            top = self.top()
            verdict = f"blamed on {top.cotenant} (overlap)" if top else "no co-tenant stands out"
        return f"{head} " + "; ".join(parts) + f": {verdict}"

    def to_dict(self) -> dict[str, object]:
        top = self.top()
        return _jsonable(
            {
                "tenant": self.tenant,
                "clock": self.clock,
                "threshold_ms": self.threshold_ms,
                "tail_n": self.tail_n,
                "body_n": self.body_n,
                "tail_grew": self.grew,
                "method": self.method,
                "blamed_on": top.cotenant if top else None,
                "not_identifiable": [b.cotenant for b in self.not_identifiable],
                "cotenants": [b.to_dict() for b in self.blames],
                "sentence": self.sentence(),
            }
        )


def attribute(
    tenant: TenantSamples,
    cotenants: Mapping[str, TenantSamples],
    *,
    p: float = 99,
    clock: str = "host",
) -> Attribution:
    """Attribute ``tenant``'s shared-phase tail to the co-tenants that were running during it.

    ``clock="host"`` uses the co-tenants' launch-to-completion intervals (work in flight);
    ``clock="device"`` their device intervals (work executing), where they have a device clock.
    """
    if clock not in ("host", "device"):
        raise ValueError(f"clock must be 'host' or 'device', got {clock!r}")
    shared = tenant.shared
    threshold = _pct(tenant.solo.host_ms, p) if len(tenant.solo) else math.nan
    ok = np.isfinite(shared.host_ms)
    if not math.isfinite(threshold):
        ok[:] = False
    tail = ok & (shared.host_ms > threshold)
    body = ok & ~tail
    base = _pct(tenant.solo.host_ms, 50) if len(tenant.solo) else math.nan
    blames = []
    for name, other in cotenants.items():
        if name == tenant.tenant or len(other.shared) == 0:
            continue
        if clock == "device":
            if not other.shared.has_clock("device"):
                continue
            busy = busy_union(*device_intervals(other.shared))
        else:
            busy = busy_union(other.shared.start_ns, other.shared.end_ns)
        hit = overlaps(shared.start_ns, shared.end_ns, busy)
        frac = busy_within(shared.start_ns, shared.end_ns, busy)
        blames.append(_blame(name, hit, frac, tail, body, shared.host_ms - base, clock))
    blames.sort(
        key=lambda b: (not b.identifiable, b.blamed, b.share, b.z if math.isfinite(b.z) else 0.0),
        reverse=True,
    )
    return Attribution(
        tenant=tenant.tenant,
        clock=clock,
        threshold_ms=threshold,
        tail_n=int(tail.sum()),
        body_n=int(body.sum()),
        grew=tail_grew(int(tail.sum()), int(ok.sum()), p),
        blames=tuple(blames),
        tail_start_ns=shared.start_ns[tail],
        tail_end_ns=shared.end_ns[tail],
        p=float(p),
    )


def _blame(
    name: str,
    hit: np.ndarray,
    frac: np.ndarray,
    tail: np.ndarray,
    body: np.ndarray,
    excess: np.ndarray,
    clock: str,
) -> Blame:
    n_tail, n_body = int(tail.sum()), int(body.sum())
    t = float(hit[tail].mean()) if n_tail else math.nan
    b = float(hit[body].mean()) if n_body else math.nan
    lift = z = tb = bb = math.nan
    share = 0.0
    why_not: str | None = None
    if n_tail and not n_body:
        why_not = "every shared iteration was in the tail (no ordinary one to compare with)"
        tb = float(frac[tail].mean())
    elif n_tail:
        lift = t / b if b > 0 else (math.inf if t > 0 else math.nan)
        tb, bb = float(frac[tail].mean()), float(frac[body].mean())
        if bb >= BODY_BUSY_MAX:
            why_not = f"busy during {100 * bb:.0f}% of ordinary iterations"
        else:
            share = min(max((tb - bb) / (1 - bb), 0.0), 1.0)
            var = frac[tail].var(ddof=1) / n_tail if n_tail > 1 else 0.0
            var += frac[body].var(ddof=1) / n_body if n_body > 1 else 0.0
            # A floor on the spread: one tail iteration is never infinite evidence.
            z = (tb - bb) / math.sqrt(max(var, 0.25 / max(n_tail, 1) ** 2))
    return Blame(
        cotenant=name,
        tail_overlap=t,
        body_overlap=b,
        lift=lift,
        tail_busy=tb,
        body_busy=bb,
        share=share,
        excess_ms=float(np.sum(np.maximum(excess[tail & hit], 0.0))),
        z=z,
        clock=clock,
        why_not=why_not,
    )


def _jsonable(d: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _jsonable(v)
        elif isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        elif isinstance(v, (np.floating, np.integer)):
            out[k] = v.item()
        else:
            out[k] = v
    return out
