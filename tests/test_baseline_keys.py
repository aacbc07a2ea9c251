"""The regression gate cannot turn itself off (issue 19 items 5 and 7): baselines are keyed by
what names a test wherever pytest puts its rootdir, a compare that cannot find what was saved
is an error, and a corrupt baseline is "unreadable", never a crash."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from pytest_kts.baseline import load_baseline, save_baseline, saved_as, scenario_key
from pytest_kts.config import RunSettings
from pytest_kts.errors import ConfigError
from pytest_kts.session import KtsSession
from tests.test_baseline import SCENARIO, make_result

HEADER = "tenant,phase,round,iteration,start_ns,end_ns,host_ms,device_ms\n"
SAVE_TEST = """
def test_scenario(kts):
    kts.tenant("fft", size=16, sleep_ms=0.2, warmup=1)
    kts.tenant("matmul", size=16, sleep_ms=0.2, warmup=1)
    kts.run()
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("KTS_"):
            monkeypatch.delenv(key)


def test_a_saved_baseline_is_found_whichever_form_the_option_takes(
    pytester: pytest.Pytester, env: None, tmp_path: Path
) -> None:
    """Given as two words, an existing DIR moves pytest's rootdir (and so every node id)."""
    pytester.makepyfile(test_gate=SAVE_TEST)
    folder = str(tmp_path / "baselines")
    common = ["--kts-device", "cpu", "--kts-iterations", "40", "--kts-round-iterations", "40"]
    saved = pytester.runpytest_subprocess(*common, "--kts-save", "b1", "--kts-baseline-dir", folder)
    saved.assert_outcomes(passed=1)
    for form in (["--kts-baseline-dir", folder], [f"--kts-baseline-dir={folder}"]):
        result = pytester.runpytest_subprocess(*common, "--kts-compare", "b1", *form)
        result.assert_outcomes(passed=1)
        out = result.stdout.str()
        assert "kts: compared with baseline 'b1':" in out, out
        assert "not compared" not in out
    (key_folder,) = (tmp_path / "baselines" / "b1").iterdir()
    facts = json.loads((key_folder / "machine.json").read_text())
    # No project marker above the test file: its path from the folder holding the baselines.
    assert facts["key"] == f"../{pytester.path.name}/test_gate.py::test_scenario"


def test_the_key_does_not_depend_on_the_rootdir(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "tests").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    test_file = project / "tests" / "test_x.py"
    root = tmp_path / "elsewhere" / ".kts-baselines"
    keys = {
        scenario_key(test_file, nodeid, root)
        for nodeid in ("tests/test_x.py::test_a[1]", "test_x.py::test_a[1]", "../x::test_a[1]")
    }
    assert keys == {"tests/test_x.py::test_a[1]"}
    # Without a project marker: the path from the folder that holds the baseline folder.
    bare = tmp_path / "bare" / "test_y.py"
    assert scenario_key(bare, "x::T::t", tmp_path / "bare" / "b") == "test_y.py::T::t"


def test_a_compare_with_no_such_baseline_is_refused_at_start(
    pytester: pytest.Pytester, env: None, tmp_path: Path
) -> None:
    pytester.makepyfile(test_gate=SAVE_TEST)
    (tmp_path / "b" / "main").mkdir(parents=True)
    args = ["--kts-device", "cpu", "--kts-baseline-dir", str(tmp_path / "b")]
    result = pytester.runpytest_subprocess(*args, "--kts-compare", "mian")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--kts-compare mian: no baseline 'mian' under *it holds main*"])
    # Saving and comparing one name in one run starts a new baseline: that is allowed.
    both = ["--kts-iterations", "20", "--kts-round-iterations", "20"]
    result = pytester.runpytest_subprocess(
        *args, *both, "--kts-compare", "new", "--kts-save", "new"
    )
    result.assert_outcomes(passed=1)
    assert "not compared" in result.stdout.str()


def test_a_test_saved_under_another_path_is_an_error_not_a_pass(tmp_path: Path) -> None:
    result = make_result(1, n=60)
    save_baseline(result, tmp_path, "b1", key="old/test_gpu.py::test_fft_next_to_gemm[4096]")
    key = "tests/test_gpu.py::test_fft_next_to_gemm[4096]"
    assert saved_as(tmp_path, "b1", key) == "old/test_gpu.py::test_fft_next_to_gemm[4096]"
    assert saved_as(tmp_path, "b1", "tests/test_gpu.py::test_other") is None
    session = KtsSession(RunSettings(compare="b1", baseline_dir=str(tmp_path)), "cpu")
    with pytest.raises(ConfigError, match=r"holds this test as 'old/test_gpu.py::.*not compared"):
        session._baselines(result, session.settings, key)
    # A test that was never saved is new: a warning, not an error.
    other = dataclasses.replace(result, warnings=[])
    session._baselines(other, session.settings, "tests/test_gpu.py::test_other")
    assert any("not compared" in w for w in other.warnings)


def test_a_baseline_saved_before_keys_is_still_found(tmp_path: Path) -> None:
    save_baseline(make_result(1, n=30), tmp_path, "main")  # keyed by its node id
    assert load_baseline(tmp_path, "main", SCENARIO, key="tests/test_gpu.py::other") is not None


@pytest.mark.parametrize(
    ("file", "text"),
    [
        ("machine.json", "[]"),
        ("machine.json", '{"machine": 5}'),
        ("machine.json", "{not json"),
        ("samples.csv", f"{HEADER}fft,solo,0\n"),
        ("samples.csv", f"{HEADER}fft,solo,0,0,1,2,1.0,1.0,extra\n"),
        ("samples.csv", f"{HEADER}fft,solo,0,0,1,2,inf,\n"),
        ("samples.csv", f"{HEADER}fft,solo,0,0,{10**30},{10**30 + 1},1.0,\n"),
        ("samples.csv", f"{HEADER}fft,solo,0,0,1,2,1e308,\n"),
        ("samples.csv", "tenant,phase\n"),
    ],
)  # fmt: skip
def test_a_corrupt_baseline_is_unreadable_not_a_crash(tmp_path: Path, file: str, text: str) -> None:
    folder = save_baseline(make_result(1, n=30), tmp_path, "main")
    (folder / file).write_text(text)
    with pytest.raises(ConfigError, match=r"unreadable baseline 'main' .* save it again") as info:
        load_baseline(tmp_path, "main", SCENARIO)
    assert len(str(info.value).splitlines()) == 1


def test_a_baseline_that_is_not_text_is_unreadable(tmp_path: Path) -> None:
    folder = save_baseline(make_result(1, n=30), tmp_path, "main")
    (folder / "samples.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="unreadable baseline"):
        load_baseline(tmp_path, "main", SCENARIO)


def test_a_tenant_the_baseline_gated_cannot_vanish_by_a_rename(
    pytester: pytest.Pytester, env: None, tmp_path: Path
) -> None:
    pytester.makepyfile(test_gate=SAVE_TEST)
    folder = f"--kts-baseline-dir={tmp_path / 'baselines'}"
    common = ["--kts-device", "cpu", "--kts-iterations", "40", "--kts-round-iterations", "40"]
    pytester.runpytest_subprocess(*common, "--kts-save", "b1", folder).assert_outcomes(passed=1)
    pytester.makepyfile(test_gate=SAVE_TEST.replace('tenant("fft"', 'tenant("fft2", "fft"'))
    result = pytester.runpytest_subprocess(*common, "--kts-compare", "b1", folder)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "baseline 'b1' has tenant(s) fft, which this run lacks" in out, out
    assert "this run's fft2 are not in it: renamed?" in out


def test_a_baseline_folder_that_cannot_be_written_is_refused_before_anything_runs(
    pytester: pytest.Pytester, env: None, tmp_path: Path
) -> None:
    pytester.makepyfile(test_gate=SAVE_TEST)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    result = pytester.runpytest_subprocess(
        "--kts-device", "cpu", "--kts-save", "b1", f"--kts-baseline-dir={a_file}"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert f"--kts-save b1: cannot write the baseline folder {a_file}" in err, err
    assert "passed" not in result.stdout.str() and "failed" not in result.stdout.str()
