"""Every setting and tenant parameter is checked before anything spawns, against bounds that
keep a run meaningful; a plan that cannot fit its time is an error, not an empty run (issue 19
items 3 and 8)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from pytest_kts import ConfigError
from pytest_kts.cli import main
from pytest_kts.config import RunSettings, check_plan, resolve
from pytest_kts.session import KtsSession
from tests.test_cli import assert_one_line_error
from tests.test_fixture import make_kts


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("KTS_"):
            monkeypatch.delenv(key)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("iterations", "1e23"),
        ("iterations", str(10**23)),
        ("iterations", "1000001"),
        ("round_iterations", "0"),
        ("max_iterations", "-5"),
        ("max_seconds", "inf"),
        ("max_seconds", "nan"),
        ("max_seconds", "0.01"),
        ("budget_seconds", "inf"),
        ("timeout", "0.1"),
        ("timeout", "1e309"),
        ("regression", "1"),
        ("regression", "0.5"),
        ("regression", "nan"),
        ("save", "../evil"),
        ("compare", "a/b"),
    ],
)
def test_a_setting_out_of_bounds_is_refused_where_it_is_read(name: str, raw: str) -> None:
    for source, kwargs in (
        (f"--kts-{name.replace('_', '-')}", {"cli": {name: raw}, "ini": {}, "environ": {}}),
        (f"KTS_{name.upper()}", {"cli": {}, "ini": {}, "environ": {f"KTS_{name.upper()}": raw}}),
    ):
        with pytest.raises(ConfigError) as info:
            resolve(**kwargs)  # type: ignore[arg-type]
        message = str(info.value)
        assert source in message and raw in message and len(message.splitlines()) == 1


def test_the_marker_is_bounded_too() -> None:
    with pytest.raises(ConfigError, match="the kts marker"):
        RunSettings().with_marker({"iterations": 10**9})


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"size": 0}, "size must be an integer from 1"),
        ({"size": 2.5}, "size must be an integer from 1"),
        ({"size": True}, "size must be an integer from 1"),
        ({"sleep_ms": math.nan}, "sleep_ms must be a number from 0"),
        ({"sleep_ms": math.inf}, "sleep_ms must be a number from 0"),
        ({"sleep_ms": -1}, "sleep_ms must be a number from 0"),
        ({"sleep_ms": 10**400}, "sleep_ms must be a number from 0"),
        ({"sleep_ms": "5"}, "sleep_ms must be a number from 0"),
        ({"warmup": -1}, "warmup must be an integer from 0"),
        ({"warmup": 2.5}, "warmup must be an integer from 0"),
        ({"seed": -1}, "seed must be an integer from 0"),
        ({"arrival": "poisson", "rate_hz": math.inf}, "rate_hz must be a number"),
        ({"arrival": "poisson", "rate_hz": 0}, "rate_hz must be a number"),
        ({"arrival": "poisson"}, "needs rate_hz"),
        ({"iterations": 10**9}, "iterations must be an integer from 1 to 1000000"),
        ({"iterations": 0}, "iterations must be an integer from 1 to 1000000"),
        ({"env": {"X": 1}}, "env must map names to strings"),
        ({"env": {"A": "x\x00y"}}, "env must map names to strings"),
        ({"workload": "decode", "params": {"layers": "0"}}, "param 'layers': expected an integer"),
        ({"workload": "decode", "params": {"graph": "maybe"}}, "param 'graph': expected one of"),
        ({"workload": "decode", "params": {"dtype": "fp8"}}, "param 'dtype': expected one of"),
        ({"workload": "embed", "params": {"seq": "1e9"}}, "param 'seq': expected an integer"),
    ],
)
def test_a_tenant_out_of_bounds_is_refused_before_anything_runs(
    kwargs: dict[str, Any], fragment: str
) -> None:
    kts, session = make_kts()
    with pytest.raises(ConfigError, match=r"tenant 'x': .*" + fragment.replace("(", r"\(")):
        kts.tenant("x", **{"workload": "fft", **kwargs})
    assert kts.tenants == () and session.calls == []


def test_a_thread_count_that_is_no_number_is_named_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KTS_CPU_THREADS", "abc")
    kts, session = make_kts()
    with pytest.raises(ConfigError, match=r"KTS_CPU_THREADS='abc' is not a thread count"):
        kts.tenant("fft")
    assert session.calls == []


def test_a_built_in_param_within_bounds_is_accepted() -> None:
    kts, _ = make_kts()
    kts.tenant("d", "decode", size=64, params={"layers": "2", "graph": "on", "dtype": "FP32"})
    kts.tenant("f", "fft", size=0 + 16, sleep_ms=0)
    assert [t.spec.size for t in kts.tenants] == [64, 16]


@pytest.mark.parametrize(
    ("settings", "per_round", "adaptive"),
    [
        (RunSettings(iterations=10**6), 3, False),  # 5000 rounds of 200 in 900 s
        (RunSettings(iterations=1000, round_iterations=1, max_seconds=60), 3, False),
        (RunSettings(max_seconds=1.0), 3, True),
        (RunSettings(iterations=800, max_seconds=5.0), 11, False),  # a matrix of 4 tenants
    ],
)
def test_an_impossible_plan_is_an_error(
    settings: RunSettings, per_round: int, adaptive: bool
) -> None:
    with pytest.raises(ConfigError, match=r"impossible plan: .* s a phase, below the 0\.5 s"):
        check_plan(settings, per_round, adaptive=adaptive)


def test_a_plan_that_fits_is_accepted() -> None:
    check_plan(RunSettings(), 3)
    check_plan(RunSettings(iterations=10**6, round_iterations=10**6), 3)
    check_plan(RunSettings(max_seconds=30), 2, adaptive=True)


def test_the_session_refuses_an_impossible_plan_before_it_locks_or_spawns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_kts.backends.base import TenantSpec

    monkeypatch.setenv("KTS_LOCK_DIR", str(tmp_path / "locks"))
    session = KtsSession(RunSettings(device="cpu", iterations=10**6), "cpu")
    tenants = [TenantSpec("a", "fft", 16), TenantSpec("b", "fft", 16)]
    with pytest.raises(ConfigError, match="impossible plan"):
        session.run("t::x", tenants, session.settings, None, 99)
    with pytest.raises(ConfigError, match="impossible plan"):
        session.run_matrix("t::m", tenants, session.settings)
    assert session.pool == {} and not (tmp_path / "locks").exists()


def test_pytest_refuses_bad_settings_at_start(pytester: pytest.Pytester, env: None) -> None:
    pytester.makepyfile("def test_x(kts):\n    raise AssertionError('ran')\n")
    for option in ("--kts-iterations=100000000000000000000000", "--kts-save=../evil"):
        result = pytester.runpytest_subprocess("--kts-device", "cpu", option)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert "ran" not in result.stdout.str() and "Traceback" not in result.stderr.str()


@pytest.mark.parametrize(
    "argv",
    [
        ["--iterations", "10000000"],
        ["--iterations", "1e3"],
        ["--timeout", "inf"],
        ["--timeout", "0.1"],
    ],
)
def test_kts_run_refuses_bad_settings_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--tenant", "fft", "--tenant", "matmul", *argv]) == 2
    assert_one_line_error(capsys.readouterr().err, argv[0])
