"""Latency model families for evaluating verdicts: each knows its true percentiles.

Every model draws one phase's latencies (ms, in time order) for one round. A round of a phase
is a separate run (seconds apart from the others), so each (phase, round) is a fresh stationary
stretch of the process, with the start-up transient every real phase has. What differs between
the families is where the dependence sits:

* ``ar``: an AR(1) Gaussian copula with a heavier-than-lognormal upper tail (the body and the
  tail move together; the old evaluation's kind).
* ``bursty``: an independent body and bursts: a burst slows several consecutive iterations
  at once, so exceedances of p99 come in runs (extremal index 0.3-0.5).
* ``queue``: an open-loop tenant (Poisson arrivals) whose latency is queueing plus service;
  an occasional long service (a co-tenant's time slice) delays the iterations queued behind
  it, so slow iterations come in chains.
* ``trace``: block resampling of a recorded GPU run's solo rounds (``tests/data``).

Three things can be put on top of any family:

* an **effect** on the shared phase, a monotone transform ``T`` of each latency with
  ``T(q_p) = DF q_p``: ``scale`` (every latency times DF), ``tail`` (the median kept, the
  tail above the solo p84 stretched, as in the study), ``top2`` (only the top 2% stretched).
  A monotone transform moves every quantile to its image, so the true shared p99 is exactly
  ``DF`` times the solo one and the dependence is kept;
* **drift**, a level per phase and round: ``independent`` (each phase's round at its own
  level, which does not cancel) or ``shared`` (a random walk in time that phases next to each
  other share, as the interleaved rounds ``solo r, shared r`` are);
* the shape of an **H200 host clock**: solo p50 0.126 ms, p99 about 0.19 ms, p99.9 0.24-0.31.

The true solo percentiles of a family come from one long run of the stationary process
(``truth``), cached per model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

ROOT = Path(__file__).resolve().parents[1]
MEDIAN_MS = 0.126  # the H200 FFT's solo host-clock p50
WARM_AMP = 0.6  # the first iteration of a phase takes 1.6x, decaying over WARM_TAU
WARM_TAU = 4.0
TRUTH_N = 4_000_000


@dataclass(frozen=True)
class Model:
    """One latency model: a family, its parameters, an effect and a drift."""

    family: str  # ar | bursty | queue | trace
    rho: float = 0.5  # ar: lag-1 correlation of the Gaussian copula
    sigma: float = 0.17  # log-sd of the body
    tail: float = 0.09  # ar: extra log latency eta * max(z - 1.5, 0)^2 (heavier than lognormal)
    burst_rate: float = 0.003  # bursty: burst starts per iteration
    burst_len: float = 2.5  # bursty: mean burst length (geometric), ~1/extremal index
    burst_factor: float = 1.9  # bursty: median slowdown inside a burst
    load: float = 0.45  # queue: utilisation (arrival rate x mean service)
    stall_rate: float = 0.004  # queue: share of services that hit a long stall
    stall_ms: float = 0.35  # queue: the stall's mean length
    trace: str = ""  # trace: "file.csv:tenant"
    effect: str = "scale"  # scale | tail | top2
    drift: str = "none"  # none | independent | shared | walk
    drift_sd: float = 0.04  # log-sd of a phase's level (stationary, whatever the mode)
    drift_corr: float = 0.9  # walk: correlation of the levels of two phases run one after another
    warmup: bool = True

    @property
    def name(self) -> str:
        base = {
            "ar": f"AR(1) rho {self.rho:g}",
            "bursty": f"bursts of {self.burst_len:g}",
            "queue": f"open loop, load {self.load:g}",
            "trace": f"trace {self.trace}",
        }[self.family]
        if self.drift != "none":
            base += f", {self.drift} drift {100 * self.drift_sd:g}%"
        return base

    # -- the stationary process --------------------------------------------------------------
    def stationary(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` consecutive latencies of the stationary solo process (no warmup, no level)."""
        if self.family == "ar":
            e = rng.standard_normal(n)
            e[1:] *= math.sqrt(1 - self.rho**2)
            z = lfilter([1.0], [1.0, -self.rho], e)
            logx = self.sigma * z + self.tail * np.maximum(z - 1.5, 0.0) ** 2
            return MEDIAN_MS * np.exp(logx)
        if self.family == "bursty":
            body = MEDIAN_MS * np.exp(self.sigma * rng.standard_normal(n))
            # Bursts: a start with probability burst_rate, a geometric length; inside, one
            # slowdown per burst (the co-tenant's slice) with a little per-iteration spread.
            starts = np.flatnonzero(rng.random(n) < self.burst_rate)
            factor = np.ones(n)
            for s in starts.tolist():
                length = int(rng.geometric(1.0 / self.burst_len))
                f = self.burst_factor * math.exp(0.15 * rng.standard_normal())
                factor[s : s + length] = np.maximum(factor[s : s + length], f)
            return body * factor
        if self.family == "queue":
            service = MEDIAN_MS * 0.88 * np.exp(self.sigma * rng.standard_normal(n))
            stall = rng.random(n) < self.stall_rate
            service[stall] += rng.exponential(self.stall_ms, int(stall.sum()))
            mean_service = MEDIAN_MS * 0.88 * math.exp(self.sigma**2 / 2) + (
                self.stall_rate * self.stall_ms
            )
            gaps = rng.exponential(mean_service / self.load, n)
            # Lindley: the wait is the walk of (service - gap) reflected at 0.
            walk = np.concatenate(([0.0], np.cumsum(service[:-1] - gaps[1:])))
            wait = walk - np.minimum.accumulate(np.minimum(walk, 0.0))
            return wait + service
        if self.family == "trace":
            return _trace_blocks(self.trace, rng, n)
        raise ValueError(f"unknown family {self.family!r}")

    # -- the effect --------------------------------------------------------------------------
    def transform(self, x: np.ndarray, df: float, p: float = 99.0) -> np.ndarray:
        """The shared phase's latencies from solo-process ones, with true DF ``df`` at ``p``."""
        if df == 1.0:
            return x
        if self.effect == "scale":
            return x * df
        knee_p = {"tail": 84.13, "top2": 98.0}[self.effect]
        knee, q = truth(self, knee_p), truth(self, p)
        gamma = math.log(df) / math.log(q / knee)
        out = x.copy()
        above = x > knee
        out[above] = x[above] * (x[above] / knee) ** gamma
        return out

    def phase(
        self,
        rng: np.random.Generator,
        n: int,
        *,
        shared: bool = False,
        df: float = 1.0,
        level: float = 1.0,
    ) -> np.ndarray:
        """One phase's round: ``n`` latencies with the warmup transient and the round's level."""
        x = self.stationary(rng, n)
        if shared:
            x = self.transform(x, df)
        if self.warmup:
            x = x * (1.0 + WARM_AMP * np.exp(-np.arange(n) / WARM_TAU))
        return x * level


@dataclass
class Levels:
    """The drift of one run: a level for each phase and round, in the order they ran."""

    model: Model
    rng: np.random.Generator
    walk: float = 0.0
    seen: dict[tuple[str, int], float] = field(default_factory=dict)

    def level(self, phase: str, rnd: int) -> float:
        key = (phase, rnd)
        if key not in self.seen:
            m = self.model
            if m.drift == "none":
                self.seen[key] = 1.0
            elif m.drift == "independent":
                self.seen[key] = math.exp(m.drift_sd * float(self.rng.standard_normal()))
            elif m.drift == "shared":  # one level per round, for both of its phases
                other = ("shared" if phase == "solo" else "solo", rnd)
                self.seen[key] = self.seen.get(other) or math.exp(
                    m.drift_sd * float(self.rng.standard_normal())
                )
            else:  # walk: a stationary AR(1) level in time, one step per phase run
                z = float(self.rng.standard_normal())
                if not self.seen:
                    self.walk = z
                else:
                    self.walk = m.drift_corr * self.walk + math.sqrt(1 - m.drift_corr**2) * z
                self.seen[key] = math.exp(m.drift_sd * self.walk)
        return self.seen[key]


@functools.cache
def _truth_sample(model: Model) -> np.ndarray:
    base = replace(model, effect="scale", drift="none", warmup=False)
    rng = np.random.default_rng(12345)
    n = TRUTH_N
    chunks = [base.stationary(rng, n // 8) for _ in range(8)]
    return np.sort(np.concatenate(chunks))


def truth(model: Model, p: float) -> float:
    """The stationary solo process's ``p``-th percentile (from a long run; cached)."""
    x = _truth_sample(replace(model, effect="scale", drift="none", drift_sd=0.0, warmup=False))
    return float(x[min(x.size - 1, math.ceil(p / 100 * x.size) - 1)])


def true_df(model: Model, df: float, p: float = 99.0) -> float:
    """The true DF at ``p`` of the pooled phases: ``df`` itself unless drift mixes levels
    into a non-scale effect (then the ratio of the two mixtures' percentiles, from a long run)."""
    if df == 1.0 or model.effect == "scale" or model.drift == "none":
        return df
    x = _truth_sample(replace(model, effect="scale", drift="none", drift_sd=0.0, warmup=False))
    rng = np.random.default_rng(99)
    level = np.exp(model.drift_sd * rng.standard_normal(x.size))
    solo = np.sort(x * level)
    shared = np.sort(model.transform(x, df, p) * level)
    k = min(x.size - 1, math.ceil(p / 100 * x.size) - 1)
    return float(shared[k] / solo[k])


def extremal_index(model: Model, p: float = 99.0, run: int = 3) -> float:
    """The runs estimate of the extremal index at the true ``p``-th percentile (long run)."""
    rng = np.random.default_rng(777)
    x = replace(model, warmup=False).stationary(rng, TRUTH_N // 4)
    above = np.flatnonzero(x > truth(model, p))
    if above.size == 0:
        return 1.0
    clusters = 1 + int(np.sum(np.diff(above) > run))
    return clusters / above.size


# -- recorded traces ---------------------------------------------------------------------------


@functools.cache
def trace_rounds(spec: str) -> tuple[np.ndarray, ...]:
    """The solo host-clock rounds of ``file.csv:tenant`` from tests/data (warmup left in)."""
    from pytest_kts.samples import from_csv

    path, tenant = spec.split(":")
    ts = from_csv((ROOT / "tests" / "data" / path).read_text())[tenant]
    x, labels = ts.solo.latency("host"), ts.solo.round
    rounds = [x[(labels == k) & np.isfinite(x)] for k in np.unique(labels)]
    return tuple(r for r in rounds if r.size >= 100)


TRACE_BLOCK = 50


def _trace_blocks(spec: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` latencies from random 50-sample blocks of a trace's solo rounds (its dependence
    up to 50 iterations kept), each block's first iterations past the round's warmup."""
    rounds = trace_rounds(spec)
    out, got = [], 0
    while got < n:
        r = rounds[int(rng.integers(len(rounds)))]
        s = int(rng.integers(20, max(21, r.size - TRACE_BLOCK)))
        out.append(r[s : s + TRACE_BLOCK])
        got += out[-1].size
    return np.concatenate(out)[:n]


def traces() -> list[str]:
    specs = []
    for path in sorted((ROOT / "tests" / "data").glob("*.csv")):
        from pytest_kts.samples import from_csv

        for name, ts in from_csv(path.read_text()).items():
            if ts.solo.has_clock("host") and len(ts.solo) >= 600:
                specs.append(f"{path.name}:{name}")
    return specs


def families() -> list[Model]:
    """The model families of the evaluation (each with its effect and drift chosen per cell)."""
    return [
        Model("ar", rho=0.5),
        Model("ar", rho=0.9, sigma=0.12),
        Model("bursty", burst_len=3.3, burst_rate=0.005),
        Model("bursty", burst_len=5.0, burst_rate=0.0035),
        Model("queue", load=0.4, stall_rate=0.003, stall_ms=0.15),
        Model("queue", load=0.55, stall_rate=0.003, stall_ms=0.15),
    ]
