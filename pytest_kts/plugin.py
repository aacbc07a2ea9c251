"""pytest glue: options, markers, the ``kts`` fixture, the report header and summary.

Everything that measures or computes lives elsewhere; this module only connects it to pytest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_kts import machine
from pytest_kts.config import OPTIONS, RunSettings, resolve
from pytest_kts.errors import ConfigError, KtsError, NoDeviceError
from pytest_kts.fixture import Kts
from pytest_kts.session import KtsSession
from pytest_kts.verdict import DegradationFactor

session_key = pytest.StashKey[KtsSession]()
settings_key = pytest.StashKey[RunSettings]()
sigterm_key = pytest.StashKey[bool]()

MARKERS = (
    "gpu: needs a CUDA GPU; skipped with 'no CUDA device' unless one is present or "
    "--kts-device cpu asks for the CPU",
    "kts(**settings): per-test pytest-kts settings (iterations, round_iterations, "
    "max_iterations, max_seconds, confidence, inconclusive, timeout, device, sharing)",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kts", "GPU co-location tail latency (pytest-kts)")
    for option in OPTIONS:
        if option.flag:
            group.addoption(option.cli, action="store_true", default=None, help=option.help)
        else:
            group.addoption(option.cli, default=None, help=f"{option.help} [{option.ini}]")
        parser.addini(option.ini, help=option.help, default=None)


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    cli = {o.name: config.getoption(o.cli.lstrip("-").replace("-", "_")) for o in OPTIONS}
    ini = {o.name: config.getini(o.ini) for o in OPTIONS}
    try:
        settings = resolve(cli, ini)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[settings_key] = settings
    if settings.cluster:
        _check_cluster(settings)
    try:
        config.stash[session_key] = KtsSession.create(settings)
    except NoDeviceError as exc:
        raise pytest.UsageError(str(exc)) from None


def _check_cluster(settings: RunSettings) -> None:
    try:
        from pytest_kts.backends.kubernetes import check_reachable, cluster_settings
    except ImportError as exc:
        raise pytest.UsageError(
            "--kts-cluster needs the kubernetes client: "
            f"pip install 'pytest-kts[kubernetes]' ({exc})"
        ) from None
    try:
        check_reachable(cluster_settings(settings))
    except KtsError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    session = config.stash.get(session_key, None)
    if session is None:
        return None
    if session.settings.cluster:
        s = session.settings
        return [f"kts: Kubernetes backend, namespace {s.namespace}, image {s.image}"]
    return [machine.header_line(session.device)]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is None:
        return
    session = item.config.stash.get(session_key, None)
    if session is None or session.settings.cluster:
        return
    if session.device != "cuda" and session.settings.device != "cpu":
        pytest.skip("no CUDA device")


@pytest.fixture
def kts(request: pytest.FixtureRequest) -> Iterator[Kts]:
    """Declare tenants, run them solo and co-located, and read their figures."""
    session = request.config.stash[session_key]
    _handle_sigterm(request.config)
    settings = session.settings
    for marker in reversed(list(request.node.iter_markers("kts"))):
        try:
            settings = settings.with_marker(marker.kwargs)
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
    device = session.device
    if settings.device != session.settings.device and not settings.cluster:
        device = machine.resolve_device(settings.device)
    handle = Kts(request.node.nodeid, settings, device, session, _progress(request.config))
    yield handle
    result = handle.result
    if result is None:
        return
    for name, tenant in result.tenants.items():
        df = tenant.df(99, "host")
        if df is not None:
            request.node.user_properties.append((f"kts_df_p99_{name}", round(df.value, 4)))
        shared = tenant.summary("shared", "host")
        if shared is not None:
            request.node.user_properties.append((f"kts_shared_p99_ms_{name}", round(shared.p99, 4)))


def _handle_sigterm(config: pytest.Config) -> None:
    """From the first kts test on, SIGTERM cleans up like Ctrl-C (pytest_kts.signals)."""
    if config.stash.get(sigterm_key, False):
        return
    from pytest_kts import signals

    config.stash[sigterm_key] = True
    config.add_cleanup(signals.install())


def _progress(config: pytest.Config) -> Any:
    try:
        from pytest_kts.progress import Progress
    except ImportError:
        return None
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return None
    return _Uncaptured(Progress(reporter._tw, config.get_verbosity()), config)


class _Uncaptured:
    """Progress lines go to the terminal, not into the test's captured output."""

    def __init__(self, inner: Any, config: pytest.Config) -> None:
        self._inner = inner
        self._capman = config.pluginmanager.get_plugin("capturemanager")

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        if self._capman is None:
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._capman.global_and_fixture_disabled():
                return method(*args, **kwargs)

        return call


def pytest_assertrepr_compare(
    config: pytest.Config, op: str, left: object, right: object
) -> list[str] | None:
    comparison = op in ("<", "<=", ">", ">=") and isinstance(right, (int, float))
    if isinstance(left, DegradationFactor) and comparison:
        return left.explain(op, float(right))
    return None


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    session = config.stash.get(session_key, None)
    if session is None or not (session.results or session.matrices):
        return
    from pytest_kts.report import render_matrices, render_table

    terminalreporter.section("kts: co-location latency")
    if session.results:
        terminalreporter.write_line(render_table(session.results))
    if session.matrices:
        terminalreporter.write_line(render_matrices(session.matrices))
    directory = session.settings.report_dir
    if directory is not None:
        session.write_report(Path(directory))
        if session.report_error:
            terminalreporter.write_line(f"kts: {session.report_error}", red=True)
        else:
            terminalreporter.write_line(f"kts: report written to {directory}/results.md")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(session_key, None)
    if session is not None:
        session.close()  # pooled tenant workers end with the session, Ctrl-C included
