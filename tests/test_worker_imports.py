"""The worker side imports only what a worker needs (issue 12 item 9).

A worker image installs torch, numpy and this project with ``--no-deps``: importing
``workers.run`` must work with tabulate, matplotlib, kubernetes and pytest absent.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("tabulate", "matplotlib", "kubernetes", "pytest", "_pytest", "pynvml", "scipy")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_workers_run_imports_with_test_side_packages_blocked() -> None:
    proc = _run(
        f"""
        import sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None  # an import of it now raises ImportError
        import pytest_kts.workers.run
        import pytest_kts.workers.harness
        import pytest_kts.protocol
        loaded = sorted(m for m in sys.modules if m.startswith("pytest_kts"))
        print(" ".join(loaded))
        """
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert "pytest_kts.protocol" in loaded
    # Nothing of the test side came along with the protocol.
    assert not loaded & {"pytest_kts.matrix", "pytest_kts.fixture", "pytest_kts.plugin"}


def test_bare_package_import_loads_nothing_else_and_names_resolve_lazily() -> None:
    proc = _run(
        """
        import sys
        import pytest_kts
        before = sorted(m for m in sys.modules if m.startswith("pytest_kts."))
        from pytest_kts import MatrixResult, RegressionError, assert_df
        print(before, MatrixResult.__module__, RegressionError.__module__, assert_df.__module__)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:4] == [
        "[]",
        "pytest_kts.matrix",
        "pytest_kts.errors",
        "pytest_kts.fixture",
    ]


def test_every_exported_name_resolves() -> None:
    import pytest_kts

    for name in pytest_kts.__all__:
        assert getattr(pytest_kts, name) is not None, name
    assert issubclass(pytest_kts.KtsInconclusiveWarning, UserWarning)
    assert issubclass(pytest_kts.RegressionError, AssertionError)
    assert set(pytest_kts.__all__) <= set(dir(pytest_kts))
