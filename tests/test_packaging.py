"""What the wheel installs, and that a user's own ``workers`` package cannot shadow ours."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pytest_kts.constants import STREAMS_WORKER_MODULE, WORKER_MODULE

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_one_top_level_package_with_the_workers_inside(
    tmp_path: Path,
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("pytest_kts-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"pytest_kts"}  # no top-level "workers" to collide with anyone's
    for module in (WORKER_MODULE, STREAMS_WORKER_MODULE):
        path = module.replace(".", "/") + ".py"
        assert path in names
        assert (
            zipfile.ZipFile(wheel).read(path) == (ROOT / "workers" / Path(path).name).read_bytes()
        )
    assert "pytest_kts/py.typed" in names


def test_worker_modules_import_without_a_workers_package_on_the_path(tmp_path: Path) -> None:
    # A folder with its own "workers" package first on the path, as `python -m` puts the
    # working directory: our worker module must still be ours.
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "__init__.py").write_text("raise ImportError('the user workers')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    out = subprocess.run(
        [sys.executable, "-m", WORKER_MODULE, "--help"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert WORKER_MODULE in out.stdout


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_scenario_runs_from_a_folder_that_has_its_own_workers_package(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith("KTS_"):
            monkeypatch.delenv(key)
    pytester.mkpydir("workers")
    (pytester.path / "workers" / "run.py").write_text("raise SystemExit('the user run')\n")
    pytester.makepyfile(
        """
        from pytest_kts import assert_df

        def test_two(kts):
            kts.tenant("fft", size=16, sleep_ms=0.5, warmup=1)
            kts.tenant("matmul", size=16, sleep_ms=0.5, warmup=1)
            result = kts.run()
            assert result["fft"].summary("solo").n > 0
        """
    )
    result = pytester.runpytest_subprocess(
        "--kts-device", "cpu", "--kts-iterations", "20", "--kts-round-iterations", "20"
    )
    result.assert_outcomes(passed=1)


def test_nothing_imports_the_worker_side_by_its_folder_name() -> None:
    # An installed wheel has no top-level "workers": every import must name pytest_kts.workers
    # (or be relative inside it), or it breaks outside a source tree.
    import re

    pattern = re.compile(r"^\s*(from|import)\s+workers(\.|\s|$)", re.M)
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("pytest_kts", "workers", "benchmarks", "examples", "tests")
        for path in (ROOT / folder).rglob("*.py")
        if "pytest_kts/workers" not in str(path) and pattern.search(path.read_text())
    ]
    assert offenders == []
