"""pytest glue: options, markers, the ``kts`` fixture, the report header and summary.

Everything that measures or computes lives elsewhere; this module only connects it to pytest.
"""

from __future__ import annotations

import shlex
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_kts import machine, safefile
from pytest_kts.config import OPTIONS, Option, RunSettings, resolve
from pytest_kts.errors import ConfigError, DryRun, KtsError, KtsNotRunWarning, NoDeviceError
from pytest_kts.fixture import Kts
from pytest_kts.session import KtsSession
from pytest_kts.verdict import DegradationFactor

session_key = pytest.StashKey[KtsSession]()
pytest_session_key = pytest.StashKey[pytest.Session]()
settings_key = pytest.StashKey[RunSettings]()
sigterm_key = pytest.StashKey[bool]()
running_key = pytest.StashKey[str | None]()  # the test in flight
interrupted_key = pytest.StashKey[tuple[str, str]]()  # (test, "SIGTERM" | "Ctrl-C")

MARKERS = (
    "gpu: needs a CUDA GPU; skipped with 'no CUDA device' unless one is present or "
    "--kts-device cpu asks for the CPU",
    "kts(**settings): per-test pytest-kts settings (iterations, round_iterations, "
    "max_iterations, max_seconds, confidence, inconclusive, timeout, device, sharing, "
    "gpu_request and its dra_*, hami_*, kai_* options)",
)


def _ini_type(option: Option) -> str:
    """The ini type pytest shows in ``--help`` (and parses): from the option's default."""
    if option.flag or isinstance(option.default, bool):
        return "bool"
    if isinstance(option.default, int):
        return "int"
    if isinstance(option.default, float):
        return "float"
    return "string"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kts", "GPU co-location tail latency (pytest-kts)")
    for option in OPTIONS:
        if option.flag:
            group.addoption(option.cli, action="store_true", default=None, help=option.help)
        else:
            # The allowed values in --help; the value itself is checked once, in config.resolve.
            metavar = "{" + ",".join(option.choices) + "}" if option.choices else None
            group.addoption(
                option.cli, default=None, metavar=metavar, help=f"{option.help} [{option.ini}]"
            )
        try:
            parser.addini(option.ini, help=option.help, type=_ini_type(option), default=None)  # type: ignore[arg-type]
        except ValueError:  # a pytest before 8.4 knows no "int" or "float" ini type
            parser.addini(option.ini, help=option.help, default=None)


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    cli = {o.name: config.getoption(o.cli.lstrip("-").replace("-", "_")) for o in OPTIONS}
    ini = {o.name: _getini(config, o) for o in OPTIONS}
    try:
        settings = resolve(cli, ini)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[settings_key] = settings
    if settings.dry_run and not settings.cluster:
        raise pytest.UsageError("--kts-dry-run shows what a cluster run creates: add --kts-cluster")
    if settings.report_dir is not None:
        try:  # now, not after the whole run: the report is the run's product
            safefile.check_writable(settings.report_dir)
        except OSError as exc:
            raise pytest.UsageError(
                f"--kts-report {settings.report}: cannot write there ({exc.strerror or exc}); "
                "choose a folder you can write"
            ) from None
    if settings.save:
        root = Path(settings.baseline_dir or ".kts-baselines")
        try:  # now, not after every test has spent its budget
            safefile.check_writable(root)
        except OSError as exc:
            raise pytest.UsageError(
                f"--kts-save {settings.save}: cannot write the baseline folder {root} "
                f"({exc.strerror or exc}); choose a --kts-baseline-dir you can write"
            ) from None
    if settings.compare and settings.compare != settings.save:
        _check_baseline_exists(settings)
    if settings.cluster and not settings.dry_run:
        _check_cluster(settings)
    try:
        config.stash[session_key] = KtsSession.create(settings)
    except NoDeviceError as exc:
        raise pytest.UsageError(str(exc)) from None
    _xdist_cleanup(config)


def _getini(config: pytest.Config, option: Option) -> Any:
    """One ini value, as pytest parses its type. pytest's own error (``invalid literal for
    int() with base 10: ''`` for ``kts_iterations =``) names neither the setting nor the file:
    this one names both, and how to fall back to the default."""
    try:
        return config.getini(option.ini)
    except (ValueError, TypeError, pytest.UsageError) as exc:
        where = f" in {config.inipath}" if config.inipath else ""
        raise pytest.UsageError(
            f"pytest-kts: ini option {option.ini}{where} expects {_ini_type(option)}: {exc}; "
            f"give a value, or remove the line for the default ({option.default})"
        ) from None


def _xdist_cleanup(config: pytest.Config) -> None:
    """Under pytest-xdist, a SIGTERM to the controller must not leave its workers measuring
    (they went on for half a minute, starting the next test's tenants): the controller turns
    SIGTERM into an interrupt from the start (it runs no test, so the first-test install
    never happens there), and xdist then tears its workers down as on Ctrl-C. (A controller
    killed outright closes the workers' channel, which ends them: tests/test_signals.py.)"""
    option = config.option
    if not _is_xdist_worker(config) and (
        getattr(option, "numprocesses", None) or getattr(option, "dist", "no") != "no"
    ):
        _handle_sigterm(config)


def _check_baseline_exists(settings: RunSettings) -> None:
    """--kts-compare NAME with no NAME saved would compare nothing and pass: refuse it now."""
    root = Path(settings.baseline_dir or ".kts-baselines")
    if (root / str(settings.compare)).is_dir():
        return
    held = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    raise pytest.UsageError(
        f"--kts-compare {settings.compare}: no baseline {settings.compare!r} under {root.resolve()}"
        f" ({'it holds ' + ', '.join(held) if held else 'nothing saved there'}); save one "
        f"first with --kts-save {settings.compare}, or give --kts-baseline-dir"
    )


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
        line = f"kts: Kubernetes backend, namespace {s.namespace}, image {s.image}"
        line += f", --kts-gpu-request {s.gpu_request}"
        if s.dry_run:
            line += "; dry run: manifests are printed, nothing is created"
        return [line]
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
            if marker.args:
                raise ConfigError(
                    f"@pytest.mark.kts takes keywords only, got {marker.args!r}: name each "
                    "setting, e.g. @pytest.mark.kts(max_seconds=50)"
                )
            settings = settings.with_marker(marker.kwargs)
        except ConfigError as exc:  # one line at the test, not a fixture traceback
            pytest.fail(f"{type(exc).__name__}: {exc}", pytrace=False)
    device = session.device
    if settings.device != session.settings.device and not settings.cluster:
        device = machine.resolve_device(settings.device)
    key = None
    if settings.save or settings.compare:
        from pytest_kts.baseline import scenario_key

        root = Path(settings.baseline_dir or ".kts-baselines")
        key = scenario_key(request.node.path, request.node.nodeid, root)
    handle = Kts(request.node.nodeid, settings, device, session, _progress(request.config), key=key)
    yield handle
    if handle.tenants and not handle.ran:
        # Declared and never run: the test measured nothing, and a gate that did not run
        # must not pass unremarked.
        request.node.warn(
            KtsNotRunWarning(
                f"{len(handle.tenants)} tenant(s) declared but no kts.run(), run_modes(), "
                "matrix() or packing(): nothing was measured"
            )
        )
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


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _progress(config: pytest.Config) -> Any:
    if _is_xdist_worker(config):
        return None  # a worker's terminal is not the user's; the controller prints the table
    try:
        from pytest_kts.progress import Progress, _is_tty
    except ImportError:
        return None
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return None
    capman = config.pluginmanager.get_plugin("capturemanager")
    tty = None
    if capman is not None:
        # Inside a test pytest's capture holds file descriptor 1, so asking the terminal
        # writer's file "are you a TTY?" would say no: ask with the capture set aside.
        with capman.global_and_fixture_disabled():
            tty = _is_tty(reporter._tw)
    return _Uncaptured(Progress(reporter._tw, config.get_verbosity(), tty=tty), config)


class _Uncaptured:
    """Progress lines go to the terminal, not into the test's captured output."""

    def __init__(self, inner: Any, config: pytest.Config) -> None:
        self._inner = inner
        self._capman = config.pluginmanager.get_plugin("capturemanager")

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        capman = self._capman
        if capman is None:
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            with capman.global_and_fixture_disabled():
                return method(*args, **kwargs)

        return call


def pytest_assertrepr_compare(
    config: pytest.Config, op: str, left: object, right: object
) -> list[str] | None:
    comparison = op in ("<", "<=", ">", ">=")
    if isinstance(left, DegradationFactor) and comparison and isinstance(right, (int, float)):
        # The verdict, the cause and the samples fit in pytest's 8 lines; -vv adds the method.
        return left.explain(op, float(right), verbose=config.get_verbosity() >= 2)
    return None


# -- failures in one headline ------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A pytest-kts error (a regression, a worker that died, a bad tenant) fails the test with
    its message and the line of the test that asked for it, not a traceback into the plugin."""
    outcome = yield
    report = outcome.get_result()
    excinfo = call.excinfo
    if excinfo is None or not report.failed or not isinstance(excinfo.value, KtsError):
        return
    if isinstance(excinfo.value, DryRun):
        # Not a failure: the test asked for its scenario, which was printed, not run.
        path, line, _ = item.location
        report.outcome = "skipped"
        report.longrepr = (str(path), (line or 0) + 1, f"Skipped: {excinfo.value}")
        return
    report.longrepr = _short_failure(item, excinfo)


def _short_failure(item: pytest.Item, excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    where = ""
    path = getattr(item, "path", None)
    for entry in reversed(excinfo.traceback):
        if path is not None and Path(entry.path) == path:
            line = str(entry.statement).strip() if entry.statement is not None else ""
            where = f"{_relative(path, item.config.rootpath)}:{entry.lineno + 1}: {line}\n"
            break
    return f"{where}{type(excinfo.value).__name__}: {excinfo.value}"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# -- pytest-xdist: workers send their results, the controller reports them once ----------------

WORKEROUTPUT_KEY = "kts_results"


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[pytest_session_key] = session  # the summary may set its exit status


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, Any, None]:
    """Remember the test in flight: a Ctrl-C or SIGTERM during it names it in the summary."""
    item.config.stash[running_key] = item.nodeid
    outcome = yield
    if outcome.excinfo is None:  # an interrupt leaves it set: the summary names the test
        item.config.stash[running_key] = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    running = config.stash.get(running_key, None)
    if exitstatus == pytest.ExitCode.INTERRUPTED and running is not None:
        from pytest_kts import signals

        how = "SIGTERM" if signals.terminated() else "Ctrl-C"
        config.stash[interrupted_key] = (running, how)
        kts_session = config.stash.get(session_key, None)
        if kts_session is not None:
            kts_session.interrupted = f"{running} (by {how})"
    output = getattr(config, "workeroutput", None)
    kts = config.stash.get(session_key, None)
    if output is None or kts is None or not (kts.results or kts.matrices):
        return
    from pytest_kts import transfer

    output[WORKEROUTPUT_KEY] = transfer.dumps(kts.results, kts.matrices)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist's controller: a worker finished; take its results into this session."""
    payload = getattr(node, "workeroutput", {}).get(WORKEROUTPUT_KEY)
    kts = node.config.stash.get(session_key, None)
    if not payload or kts is None:
        return
    from pytest_kts import transfer

    results, matrices = transfer.loads(payload)
    kts.results += results
    kts.matrices += matrices
    # One table in a stable order, whichever worker finished first.
    kts.results.sort(key=lambda r: (r.started_at, r.name))
    kts.matrices.sort(key=lambda m: (m.started_at, m.name))


# -- the terminal summary -----------------------------------------------------------------------


def command_line(config: pytest.Config) -> str:
    """The command as the user typed it (not ``__main__.py``, nor ``-c`` under xdist)."""
    return shlex.join(["pytest", *config.invocation_params.args])


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _is_xdist_worker(config):
        return
    session = config.stash.get(session_key, None)
    if session is not None and session.dry_runs:
        _dry_run_summary(terminalreporter, session)
    interrupted = config.stash.get(interrupted_key, None)
    if interrupted is not None:
        test, how = interrupted
        terminalreporter.section("kts: interrupted", red=True)
        terminalreporter.write_line(
            f"kts: {test} was interrupted by {how} in the middle of its scenario: its phases "
            "were stopped and its workers cleaned up; it has no verdict (not a pass)",
            red=True,
        )
    if session is None or not (session.results or session.matrices):
        return
    from pytest_kts.report import (
        check_summary_lines,
        render_matrices,
        render_table,
        summary_lines,
    )

    terminalreporter.section("kts: co-location latency")
    if session.results:
        terminalreporter.write_line(render_table(session.results))
    if session.matrices:
        terminalreporter.write_line(render_matrices(session.matrices))
    for line, markup in summary_lines(session.results):
        terminalreporter.write_line(line, **markup)
    for packing in session.packings:
        terminalreporter.write_line(f"kts: packing {packing.name}: {packing.sentence()}")
    report_dir = None if session.settings.report_dir is None else Path(session.settings.report_dir)
    for line, markup in check_summary_lines(session.results, report_dir):
        terminalreporter.write_line(line, **markup)
    directory = session.settings.report_dir
    if directory is not None:
        session.write_report(Path(directory), command=command_line(config))
        if session.report_error:
            terminalreporter.write_line(
                f"kts: {session.report_error}; the previous report there is unchanged", red=True
            )
            pytest_session = config.stash.get(pytest_session_key, None)
            if pytest_session is not None and pytest_session.exitstatus == pytest.ExitCode.OK:
                # The report is what the run was for: without it the run did not succeed.
                pytest_session.exitstatus = pytest.ExitCode.TESTS_FAILED
        else:
            terminalreporter.write_line(f"kts: report written to {directory}/results.md")


def _dry_run_summary(terminalreporter: Any, session: KtsSession) -> None:
    """The manifests of every scenario of a --kts-dry-run, as YAML (and to the report dir)."""
    terminalreporter.section("kts: dry run (nothing was sent to a cluster)")
    terminalreporter.write_line(session.dry_run_yaml().rstrip("\n"))
    directory = session.settings.report_dir
    if directory is not None:
        path = session.write_dry_run(Path(directory))
        terminalreporter.write_line(f"kts: manifests written to {path}")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(session_key, None)
    if session is not None:
        session.close()  # pooled tenant workers end with the session, Ctrl-C included
