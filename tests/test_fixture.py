"""The result API has no side effects (issue 13 item 4): nothing runs behind the test's back,
and a DF's inconclusive policy is fixed when it is made."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from pytest_kts import ConfigError, KtsInconclusiveWarning, assert_df
from pytest_kts.backends.base import TenantSpec
from pytest_kts.config import RunSettings
from pytest_kts.fixture import Kts
from pytest_kts.protocol import Sample
from pytest_kts.results import ScenarioResult, TenantResult
from pytest_kts.samples import group


def make_result(name: str, specs: Sequence[TenantSpec], policy: str, n: int) -> ScenarioResult:
    """``n`` samples per tenant and phase, shared 1.2x solo, host clock only."""
    rng = np.random.default_rng(7)
    records = []
    t = 1_700_000_000_000_000_000
    for phase, scale in (("solo", 1.0), ("shared", 1.2)):
        for spec in specs:
            for i, ms in enumerate(scale * rng.lognormal(0, 0.2, n)):
                start = t + i * 10_000_000
                end = start + int(ms * 1e6)
                records.append(Sample(spec.name, phase, 0, i, start, end, float(ms), math.nan))
        t += n * 10_000_000
    grouped = group(records)
    tenants = {
        s.name: TenantResult(spec=s, samples=grouped[s.name], on_inconclusive=policy) for s in specs
    }
    return ScenarioResult(name=name, device="cpu", tenants=tenants)


class FakeSession:
    def __init__(self, n: int = 40) -> None:
        self.calls: list[str] = []
        self.n = n

    def run(
        self,
        name: str,
        tenants: Sequence[TenantSpec],
        settings: RunSettings,
        slo: Mapping[str, float] | None,
        p: float,
        progress: Any = None,
        key: str | None = None,
        explain: bool = False,
    ) -> ScenarioResult:
        self.calls.append("run")
        return make_result(name, tenants, settings.inconclusive, self.n)


def make_kts(policy: str = "warn", n: int = 40) -> tuple[Kts, FakeSession]:
    session = FakeSession(n)
    settings = RunSettings(device="cpu", inconclusive=policy)
    return Kts("t::x", settings, "cpu", session), session  # type: ignore[arg-type]


def test_asserting_on_a_tenant_that_never_ran_is_an_error_and_runs_nothing() -> None:
    kts, session = make_kts()
    fft = kts.tenant("fft")
    kts.tenant("matmul")
    with pytest.raises(ConfigError, match=r"tenant 'fft' has not run: call kts\.run\(\)"):
        assert_df(fft, p=99)
    with pytest.raises(ConfigError, match="has not run"):
        _ = fft.result
    assert session.calls == []  # reading a result started nothing
    kts.run()
    assert session.calls == ["run"]
    assert fft.result is kts.result["fft"]  # type: ignore[index]


def test_reads_return_the_same_frozen_value_and_policies_do_not_leak() -> None:
    kts, _ = make_kts("fail", n=400)
    fft = kts.tenant("fft")
    kts.tenant("matmul")
    kts.run()
    first = fft.result.df(99)
    assert first is fft.result.df(99)  # cached, not rebuilt or rewritten
    assert first.on_inconclusive == "fail"  # the session's policy, set when it was made
    lenient = assert_df(fft, p=99, on_inconclusive="warn")
    assert lenient.on_inconclusive == "warn"
    assert fft.result.df(99).on_inconclusive == "fail"  # the cached one is untouched
    at = float(first)  # a threshold at the point estimate is undecided whatever the noise
    assert first.verdict(at) == "inconclusive"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not (assert_df(fft, p=99) < at)  # "fail": undecided does not hold
    with pytest.warns(KtsInconclusiveWarning):
        assert lenient < at
    with pytest.raises(ConfigError, match="on_inconclusive must be one of warn, fail"):
        assert_df(fft, on_inconclusive="maybe")
