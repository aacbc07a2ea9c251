"""Who took the tail, by experiment: each co-tenant's effect, measured by leaving it out.

Overlap (``attribution.py``) says which co-tenant was running during the slow iterations:
correlation, and blind when a neighbour never sleeps. This module answers the causal question
the way an experiment does: the runner ran extra shared phases with each co-tenant left out
in turn, next to the full shared phase, in the same interleaved rounds (``runner._explain``).
A co-tenant's effect is then a DF of its own, ``q_p(all) / q_p(all but it)``: how much adding
it multiplies the tenant's tail, with the same interval as every DF (round pairs, the tail's
clusters, ``evidence.py``). Its *share* is the part of ``log DF`` (the full shared phase
against solo) that disappears without it.

With exactly two co-tenants the leave-one-out phases are every subset there is (each alone,
both), so exact Shapley shares come for free and are given too: they split ``log DF`` among
the co-tenants whatever order they arrived in, and sum to it. With three or more, Shapley
needs every subset (2^k - 2 shared phases against k): leave-one-out answers the operational
question ("what would moving it away buy") at a cost linear in the co-tenants.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pytest_kts.errors import KtsError
from pytest_kts.samples import PhaseSamples
from pytest_kts.verdict import DegradationFactor, degradation

__all__ = ["CausalAttribution", "Effect", "measure"]

LEAVE_ONE_OUT = "leave-one-out"


@dataclass(frozen=True)
class Effect:
    """What leaving one co-tenant out did to a tenant's tail."""

    cotenant: str
    df_without: float  # the tenant's DF (against solo) with this co-tenant left out
    effect: DegradationFactor  # q(all) / q(all but it): how much adding it multiplies the tail
    share: float  # of log DF explained by leaving it out, clipped to [0, 1]
    share_ci: tuple[float, float]  # the same from the effect's interval, clipped to [0, 1]
    shapley: float | None = None  # exact Shapley share (two co-tenants only)

    @property
    def decided(self) -> bool:
        """Whether leaving it out lowers the tail, by the whole interval of its effect."""
        return self.effect.ci[0] > 1.0

    def to_dict(self) -> dict[str, object]:
        lo, hi = self.effect.ci
        return {
            "cotenant": self.cotenant,
            "df_without": _num(self.df_without),
            "effect": _num(self.effect.value),
            "effect_ci": [_num(lo), _num(hi)],
            "share": _num(self.share),
            "share_ci": [_num(self.share_ci[0]), _num(self.share_ci[1])],
            "decided": self.decided,
            "shapley": None if self.shapley is None else _num(self.shapley),
            "rounds": self.effect.evidence.units,
        }


@dataclass(frozen=True)
class CausalAttribution:
    """Each co-tenant's measured effect on one tenant's tail (``TenantResult.attribution()``
    returns this whenever the run left co-tenants out)."""

    tenant: str
    clock: str
    p: float
    df_all: float  # the tenant's DF in the full shared phase of the same rounds
    effects: tuple[Effect, ...]  # largest effect first
    method: str = LEAVE_ONE_OUT

    def shares(self) -> dict[str, float]:
        """Share of the tail's growth each co-tenant caused (leave-one-out; never NaN)."""
        return {e.cotenant: e.share for e in self.effects}

    def top(self) -> Effect | None:
        """The co-tenant whose removal lowers the DF most, when that reduction is decided."""
        best = max(self.effects, key=lambda e: e.effect.value, default=None)
        return best if best is not None and best.decided else None

    def cell(self) -> str:
        """The terminal's "tail blamed on" cell."""
        if not self.grew:
            return "no tail growth"
        top = self.top()
        if top is None:
            return "nobody by experiment"
        return f"{top.cotenant} {100 * top.share:.0f}% (by removal)"

    @property
    def grew(self) -> bool:
        return self.df_all > 1.0

    def sentence(self) -> str:
        """One line: who, by which method, with the numbers."""
        if not self.effects:
            return f"{self.tenant}: no co-tenant was left out"
        if not self.grew:
            return (
                f"{self.tenant}: DF {self.df_all:.3g} in the full shared phase of the "
                f"{self.method} rounds: no tail growth to attribute"
            )
        parts = []
        for e in self.effects:
            lo, hi = e.share_ci
            parts.append(
                f"without {e.cotenant} the DF falls from {self.df_all:.3g} to {e.df_without:.3g}"
                f" ({e.cotenant} caused {100 * e.share:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"
                " of the tail)"
                if e.decided
                else f"without {e.cotenant} {e.df_without:.3g} (no decided effect)"
            )
        head = f"{self.method}: " + "; ".join(parts)
        top = self.top()
        if top is None:
            return head + ": no co-tenant's removal decidedly lowers the tail"
        return head + f": {top.cotenant} took the tail"

    def to_dict(self) -> dict[str, object]:
        top = self.top()
        return {
            "tenant": self.tenant,
            "method": self.method,
            "clock": self.clock,
            "p": self.p,
            "df_all": _num(self.df_all),
            "blamed_on": top.cotenant if top else None,
            "cotenants": [e.to_dict() for e in self.effects],
            "sentence": self.sentence(),
        }


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _share(log_effect: float, log_all: float) -> float:
    if not (math.isfinite(log_effect) and log_all > 0):
        return 0.0
    return min(max(log_effect / log_all, 0.0), 1.0)


def measure(
    tenant: str,
    solo: PhaseSamples,
    arms: Mapping[tuple[str, ...], PhaseSamples],
    *,
    p: float = 99,
    clock: str = "host",
    confidence: float = 0.95,
) -> CausalAttribution | None:
    """The causal attribution of ``tenant``'s tail from its leave-one-out arms.

    ``arms`` maps the tenants present in a shared phase (sorted) to ``tenant``'s samples
    there; the largest set is the full shared phase of the experiment's rounds. ``None``
    when no arm left a co-tenant out (nothing was measured).
    """
    present = [a for a in arms if tenant in a and arms[a].has_clock(clock)]
    if not present:
        return None
    full = max(present, key=len)
    outs = [a for a in present if len(a) == len(full) - 1 and set(a) < set(full)]
    if not outs or not solo.has_clock(clock):
        return None

    def df(base: PhaseSamples, test: PhaseSamples) -> DegradationFactor:
        return degradation(
            base.latency(clock),
            test.latency(clock),
            p=p,
            confidence=confidence,
            clock=clock,
            solo_segments=base.segments(),
            shared_segments=test.segments(),
        )

    try:
        all_df = df(solo, arms[full])
    except KtsError:
        return None
    log_all = math.log(all_df.value) if all_df.value > 0 else math.nan
    effects = []
    for arm in outs:
        (left_out,) = set(full) - set(arm)
        try:
            without = df(solo, arms[arm])
            effect = df(arms[arm], arms[full])
        except KtsError:
            continue
        lo, hi = effect.ci
        log_eff = math.log(effect.value) if effect.value > 0 else math.nan
        effects.append(
            Effect(
                cotenant=left_out,
                df_without=without.value,
                effect=effect,
                share=_share(log_eff, log_all),
                share_ci=(
                    _share(math.log(lo), log_all) if lo > 0 else 0.0,
                    _share(math.log(hi), log_all) if math.isfinite(hi) else 1.0,
                ),
            )
        )
    method = LEAVE_ONE_OUT
    if len(effects) == 2 and len(full) == 3 and log_all > 0:
        # Two co-tenants: v({A}) is the DF without B, v({B}) without A; Shapley averages A's
        # marginal contribution over both orders of arrival: (v(A) + v(AB) - v(B)) / 2.
        a, b = effects
        v_a, v_b = math.log(max(b.df_without, 1e-300)), math.log(max(a.df_without, 1e-300))
        phi_a, phi_b = (v_a + log_all - v_b) / 2, (v_b + log_all - v_a) / 2
        effects = [
            _with_shapley(a, phi_a / log_all),
            _with_shapley(b, phi_b / log_all),
        ]
        method = f"{LEAVE_ONE_OUT} (exact Shapley over the two co-tenants too)"
    effects.sort(key=lambda e: e.effect.value, reverse=True)
    return CausalAttribution(
        tenant=tenant,
        clock=clock,
        p=float(p),
        df_all=all_df.value,
        effects=tuple(effects),
        method=method,
    )


def _with_shapley(e: Effect, share: float) -> Effect:
    return Effect(e.cotenant, e.df_without, e.effect, e.share, e.share_ci, share)
