"""How many neighbours fit (issue 17 item 4): counts in order, the first that does not pass
stops the packing, and ``safe`` is the count before it."""

from __future__ import annotations

import dataclasses

import pytest
from dfs import make_df

from pytest_kts.backends.base import TenantSpec
from pytest_kts.config import RunSettings
from pytest_kts.errors import ConfigError
from pytest_kts.packing import copies, run_packing
from pytest_kts.results import CheckOutcome, ScenarioResult

ROUTER = TenantSpec("router", "fft", 64)
BATCH = TenantSpec("batch", "matmul", 64, seed=3)


def _fake(verdicts: dict[int, str], seen: list[tuple[str, list[str], float]]):  # type: ignore[no-untyped-def]
    def run(name: str, tenants: list[TenantSpec], settings: RunSettings) -> ScenarioResult:
        count = sum(t.name.startswith("batch") for t in tenants)
        seen.append((name, [t.name for t in tenants], settings.max_seconds))
        v = verdicts.get(count, "pass")
        value = 1.1 + 0.1 * count
        ci = {"pass": (value * 0.5, 1.25), "fail": (1.35, value * 1.1)}.get(v, (1.2, 1.4))
        check = CheckOutcome("router", 99.0, "host", 1.3, df=make_df(ci, value=value), looks=1)
        return ScenarioResult(name=name, device="cpu", tenants={}, checks=[check], gpu_seconds=10.0)

    return run


def test_packing_stops_at_the_first_count_that_does_not_pass() -> None:
    seen: list[tuple[str, list[str], float]] = []
    out = run_packing(
        "t", [ROUTER], BATCH, RunSettings(max_seconds=600.0), {"router": 1.3}, 99.0, 6,
        _fake({4: "fail"}, seen),
    )  # fmt: skip
    assert [s.count for s in out.steps] == [1, 2, 3, 4]  # nothing measured past the failure
    assert out.safe == 3
    assert seen[2][1] == ["router", "batch", "batch-2", "batch-3"]
    # Each count gets an equal share of what is left of the test's budget.
    assert seen[0][2] == pytest.approx(100.0)
    assert seen[1][2] == pytest.approx((600.0 - 10.0) / 5)
    assert out.sentence() == (
        "router keeps DF p99 < 1.3 with up to 3 copies of batch; 4 fail: 1.5 [1.35, 1.65]"
    )
    assert out.to_dict()["safe"] == 3 and len(out.to_dict()["steps"]) == 4  # type: ignore[arg-type]


def test_an_undecided_count_stops_the_packing_too() -> None:
    out = run_packing(
        "t", [ROUTER], BATCH, RunSettings(max_seconds=600.0), {"router": 1.3}, 99.0, 6,
        _fake({2: "inconclusive"}, []),
    )  # fmt: skip
    assert out.safe == 1 and "2 undecided" in out.sentence()
    everything = run_packing(
        "t", [ROUTER], BATCH, RunSettings(max_seconds=600.0), {"router": 1.3}, 99.0, 3,
        _fake({}, []),
    )  # fmt: skip
    assert everything.safe == 3 and "every count measured, up to 3" in everything.sentence()
    nothing = run_packing(
        "t", [ROUTER], BATCH, RunSettings(max_seconds=600.0), {"router": 1.3}, 99.0, 3,
        _fake({1: "fail"}, []),
    )  # fmt: skip
    assert nothing.safe == 0 and "up to 0 copies" in nothing.sentence()


def test_copies_have_names_and_seeds_of_their_own() -> None:
    names = [c.name for c in copies(BATCH, 3)]
    assert names == ["batch", "batch-2", "batch-3"]
    assert len({c.seed for c in copies(BATCH, 3)}) == 3
    assert copies(BATCH, 1) == [dataclasses.replace(BATCH)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"slo": {}}, "needs slo="),
        ({"up_to": 0}, "up_to must be"),
        ({"up_to": 100}, "up_to must be"),
        ({"slo": {"batch": 1.3}}, "being packed"),
    ],
)
def test_bad_packings_are_refused(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"slo": {"router": 1.3}, "up_to": 3} | kwargs
    with pytest.raises(ConfigError, match=match):
        run_packing(
            "t", [ROUTER], BATCH, RunSettings(), args["slo"], 99.0, args["up_to"],  # type: ignore[arg-type]
            _fake({}, []),
        )  # fmt: skip
