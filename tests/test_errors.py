"""Errors come early and short (issue 12 item 7): tenants are checked before anything spawns,
with the allowed values listed; a failure is one headline (and a worker's stderr tail), never a
traceback through the plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_kts.workers.workloads import BUILTIN, BUILTIN_PARAMS, check

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("KTS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("KTS_LOCK_DIR", str(tmp_path / "locks"))


def test_every_builtin_has_its_params_listed() -> None:
    assert set(BUILTIN) == set(BUILTIN_PARAMS)


@pytest.mark.parametrize(
    ("workload", "params", "message"),
    [
        ("fttt", {}, "unknown workload 'fttt': use one of fft, matmul, gemm, decode"),
        ("fft", {"size": "3"}, "workload 'fft': unknown param 'size'; allowed params: none"),
        (
            "decode",
            {"layerz": "2"},
            "workload 'decode': unknown param 'layerz'; allowed params: layers, heads",
        ),
        (
            "nosuchmodule_xyz:build",
            {},
            "workload 'nosuchmodule_xyz:build': no module 'nosuchmodule_xyz' on the path",
        ),
    ],
)
def test_check_lists_what_is_allowed(workload: str, params: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        check(workload, params)


def test_check_accepts_what_workers_accept() -> None:
    check("decode", {"layers": "2", "graph": "1"})
    check("examples.my_agent:build", {"anything": "1"})  # its params are its own business


def test_the_check_imports_no_torch() -> None:
    code = """
        import sys
        sys.modules["torch"] = None
        from pytest_kts.workers.workloads import check
        try:
            check("embed", {"heads": "2", "nope": "1"})
        except ValueError as exc:
            print(exc)
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "unknown param 'nope'; allowed params: layers, heads, seq, batch, dtype" in proc.stdout


def _failure_section(text: str) -> str:
    start = text.index("= FAILURES =")
    return text[start : text.index("\n=", start)]


def test_unknown_workload_fails_at_the_users_line_before_spawning(
    pytester: pytest.Pytester, env: None
) -> None:
    pytester.makepyfile(
        """
        def test_typo(kts):
            kts.tenant("fft", size=16)
            kts.tenant("decode", size=16, params={"layerz": "2"})
            raise AssertionError("never reached")
        """
    )
    result = pytester.runpytest_subprocess("--kts-device", "cpu", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    section = _failure_section(result.stdout.str())
    assert "test_unknown_workload_fails_at_the_users_line_before_spawning.py:3:" in section
    assert "ConfigError: tenant 'decode': workload 'decode': unknown param 'layerz'" in section
    assert "pytest_kts/" not in section and "Traceback" not in section
    assert "kts: co-location latency" not in result.stdout.str()  # nothing ran


def test_unknown_sharing_mode_is_refused_before_running(
    pytester: pytest.Pytester, env: None
) -> None:
    pytester.makepyfile(
        """
        def test_modes(kts):
            kts.tenant("fft", size=16)
            kts.tenant("matmul", size=16)
            kts.run_modes(["timeslice", "mpss"])
        """
    )
    result = pytester.runpytest_subprocess("--kts-device", "cpu", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*ConfigError: unknown sharing mode 'mpss': use one of timeslice, mps, streams"]
    )
    assert "kts: co-location latency" not in result.stdout.str()


def test_worker_failure_is_one_headline_and_its_stderr_tail(
    pytester: pytest.Pytester, env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ["PYTHONPATH"]]))
    pytester.makepyfile(
        """
        def test_crash(kts):
            kts.tenant("bad", workload="kts_test_workloads:crash", size=16, params={"after": "3"})
            kts.tenant("matmul", size=16)
            kts.run()
        """
    )
    result = pytester.runpytest_subprocess(
        "--kts-device", "cpu", "--kts-iterations", "20", "--kts-round-iterations", "10",
        "-p", "no:cacheprovider",
    )  # fmt: skip
    result.assert_outcomes(failed=1)
    section = _failure_section(result.stdout.str())
    assert "WorkerError: tenant 'bad'" in section
    assert "simulated worker crash" in section  # the worker's own stderr tail
    # No plugin internals: the worker's own traceback (pytest_kts/workers/) is its stderr tail.
    internals = [
        line for line in section.splitlines()
        if "pytest_kts/" in line and "pytest_kts/workers/" not in line
    ]  # fmt: skip
    assert internals == []
    assert len(section.splitlines()) < 40


def test_a_cluster_workload_need_not_be_importable_here() -> None:
    check("only_in_the_image:build", importable=False)
    with pytest.raises(ValueError, match="unknown workload 'fttt'"):
        check("fttt", importable=False)
