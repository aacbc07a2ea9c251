"""Run-wide state: settings, device, the session's time budget, and every scenario's result."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_kts import machine
from pytest_kts.backends import make_backend
from pytest_kts.backends.base import Backend, TenantSpec
from pytest_kts.config import RunSettings, check_plan
from pytest_kts.errors import ConfigError, DryRun, RegressionError
from pytest_kts.matrix import MatrixResult, matrix_groups, matrix_rows, run_matrix
from pytest_kts.packing import PackingResult, run_packing
from pytest_kts.results import ScenarioResult
from pytest_kts.runner import Budget, ProgressSink, run_scenario

# The lock key CPU scenarios share (GPU scenarios lock their GPU's UUID).
CPU_LOCK = "cpu"
# Worker processes a pooled backend starts beside the tenants that need new ones (in
# parallel, inside the same start), so that a later scenario with one tenant more than any
# before finds a process up.
POOL_SPARES = 1


@dataclass
class KtsSession:
    settings: RunSettings
    device: str
    budget: Budget = field(default_factory=Budget)
    results: list[ScenarioResult] = field(default_factory=list)
    matrices: list[MatrixResult] = field(default_factory=list)
    report_paths: list[Path] = field(default_factory=list)
    report_error: str | None = None
    # Resident worker processes kept across scenarios, by (sharing, device, environment),
    # whatever tenants they hold: a later scenario's tenants are loaded into processes whose
    # interpreter, torch and CUDA context are up (build and warmup only), and a tenant
    # declared again unchanged starts at once. Start-up is most of a test's fixed cost.
    pool: dict[tuple[Any, ...], Backend] = field(default_factory=dict)
    packings: list[PackingResult] = field(default_factory=list)
    interrupted: str | None = None  # the test a Ctrl-C or SIGTERM stopped, for the report
    # --kts-dry-run: (scenario, the manifests its first round would create), in test order.
    dry_runs: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)

    @classmethod
    def create(cls, settings: RunSettings) -> KtsSession:
        device = "cuda" if settings.cluster and settings.device == "auto" else settings.device
        if not settings.cluster:
            device = machine.resolve_device(settings.device)
        return cls(settings, device, Budget(settings.budget_seconds))

    def run(
        self,
        name: str,
        tenants: Sequence[TenantSpec],
        settings: RunSettings,
        slo: Mapping[str, float] | None,
        p: float,
        progress: ProgressSink | None = None,
        key: str | None = None,
        explain: bool = False,
    ) -> ScenarioResult:
        """Run one scenario; ``key`` names its baseline (``baseline.scenario_key``; without
        one, ``name`` does); ``explain`` asks for leave-one-out rounds (``run_scenario``)."""
        # Before a lock is taken or a worker spawns: a plan that cannot fit its time.
        check_plan(settings, len(slo) + 1 if slo else len(tenants) + 1, adaptive=bool(slo))
        if settings.cluster and settings.dry_run:
            self._dry_run(name, tenants, settings, slo, p)
        with self._gpu(settings, progress=progress) as (backend, gpu_uuid, pooled):
            telemetry_factory = None
            if gpu_uuid is not None:
                telemetry_factory = _telemetry_factory(gpu_uuid)
            try:
                result = run_scenario(
                    name,
                    tenants,
                    settings,
                    slo,
                    p,
                    progress,
                    device=self.device,
                    backend=backend,
                    budget=self.budget,
                    telemetry_factory=telemetry_factory,
                    machine=machine.facts(self.device),
                    keep_backend=pooled,
                    explain=explain,
                )
            except BaseException:
                if pooled:
                    self._drop(backend)  # a failed scenario's workers serve no other
                raise
        if result.telemetry is not None:
            result.warnings += result.telemetry.clock_warnings(result.windows)
        if settings.cluster and settings.prometheus:
            from pytest_kts.telemetry import fetch_dcgm

            # dcgm-exporter's profiling fields for each phase window (never raises).
            dcgm = fetch_dcgm(
                settings.prometheus, result.windows, f'namespace="{settings.namespace}"'
            )
            result.backend["dcgm"] = dcgm
            result.warnings += [f"Prometheus: {e}" for e in dcgm.get("errors", [])]
        self.results.append(result)
        self._baselines(result, settings, key or name, p)
        return result

    def _dry_run(
        self,
        name: str,
        tenants: Sequence[TenantSpec],
        settings: RunSettings,
        slo: Mapping[str, float] | None,
        p: float,
    ) -> None:
        """Render what the scenario would create on the cluster, keep it, stop the test."""
        from pytest_kts import dryrun

        documents = dryrun.manifests(tenants, settings, slo, p, self.device)
        self.dry_runs.append((name, documents))
        raise DryRun(f"dry run: {len(documents)} manifest(s) rendered, nothing sent to a cluster")

    def _baselines(
        self, result: ScenarioResult, settings: RunSettings, key: str, p: float = 99
    ) -> None:
        """Save this run as a baseline, and/or judge it against one at the run's ``p``.

        Every comparison lands in ``result.comparisons`` (regression, no regression or
        undecided, with its estimate) for the terminal summary and ``results.md``; where a
        baseline was saved lands in ``result.baseline_saved``. A regression raises here,
        inside the test, so the test fails (in one headline: see ``plugin``) and the terminal
        summary stays intact; a regressed run is not saved as the new baseline. An undecided
        comparison follows ``--kts-inconclusive`` like an undecided SLO check: a gate that
        cannot tell must not pass in silence.
        """
        if not (settings.save or settings.compare):
            return
        from pytest_kts import baseline

        root = Path(settings.baseline_dir or ".kts-baselines")
        if settings.compare:
            before = baseline.load_baseline(root, settings.compare, result.name, key)
            if before is None:
                saved = baseline.saved_as(root, settings.compare, key)
                if saved is not None:
                    # The gate must not turn itself off: this test was saved, under another path.
                    raise ConfigError(
                        f"baseline {settings.compare!r} under {root} holds this test as "
                        f"{saved!r}, not as {key!r} (saved from another folder?): not compared. "
                        f"Save it again with --kts-save {settings.compare}"
                    )
                result.warnings.append(
                    f"no baseline {settings.compare!r} for this scenario under {root} (a new "
                    "test?): not compared"
                )
            else:
                lost, new = baseline.missing_tenants(result, before)
                if lost:
                    # A tenant the baseline gated is gone (renamed?): its gate would be off.
                    raise ConfigError(
                        f"baseline {settings.compare!r} has tenant(s) {', '.join(lost)}, which "
                        f"this run lacks"
                        + (f" (this run's {', '.join(new)} are not in it: renamed?)" if new else "")
                        + f": not compared. Save it again with "
                        f"--kts-save {settings.compare}"
                    )
                if new:
                    result.warnings.append(
                        f"baseline {settings.compare!r} has no tenant(s) {', '.join(new)}: "
                        "those are not compared"
                    )
                mismatches = baseline.machine_mismatches(result.machine, before.machine)
                result.warnings += [f"baseline machine differs: {m}" for m in mismatches]
                # Another sharing setting moves the tail by itself: say so, do not gate on it.
                unattributable = baseline.sharing_mismatch(result.sharing_env, before.sharing_env)
                if unattributable:
                    result.warnings.append(unattributable)
                comparisons = baseline.compare(result, before, threshold=settings.regression, p=p)
                result.comparisons = [
                    c.to_dict() | {"baseline": settings.compare, "gated": not unattributable}
                    for c in comparisons
                ]
                regressed = [c.describe() for c in comparisons if c.regressed]
                if regressed and not unattributable:
                    raise RegressionError(
                        f"regression against baseline {settings.compare!r}: " + "; ".join(regressed)
                    )
                undecided = [c.describe() for c in comparisons if c.verdict == "inconclusive"]
                if undecided and not unattributable:
                    _undecided_comparison(
                        f"undecided against baseline {settings.compare!r}: " + "; ".join(undecided),
                        settings.inconclusive,
                    )
        if settings.save:
            saved_to = baseline.save_baseline(result, root, settings.save, key)
            result.baseline_saved = str(saved_to)

    def run_modes(
        self,
        name: str,
        tenants: Sequence[TenantSpec],
        settings: RunSettings,
        modes: Sequence[str],
        slo: Mapping[str, float] | None,
        p: float,
        progress: ProgressSink | None = None,
        key: str | None = None,
    ) -> dict[str, ScenarioResult]:
        """The same tenants under each sharing mode, one scenario per mode, side by side."""
        return {
            mode: self.run(
                f"{name}[{mode}]", tenants, dataclasses.replace(settings, sharing=mode), slo, p,
                progress, key=f"{key or name}[{mode}]",
            )
            for mode in modes
        }  # fmt: skip

    def packing(
        self,
        name: str,
        others: Sequence[TenantSpec],
        template: TenantSpec,
        settings: RunSettings,
        slo: Mapping[str, float],
        p: float,
        up_to: int,
        progress: ProgressSink | None = None,
        key: str | None = None,
    ) -> PackingResult:
        """Copies of ``template`` next to ``others`` until an SLO no longer passes
        (``packing.run_packing``); every count's scenario lands in the report."""

        def one(scenario: str, tenants: list[TenantSpec], counted: RunSettings) -> ScenarioResult:
            return self.run(scenario, tenants, counted, slo, p, progress, key=None)

        result = run_packing(name, others, template, settings, slo, p, up_to, one)
        self.packings.append(result)
        return result

    def run_matrix(
        self,
        name: str,
        tenants: Sequence[TenantSpec],
        settings: RunSettings,
        include_all: bool = True,
        progress: ProgressSink | None = None,
        rows: Sequence[str] | None = None,
    ) -> MatrixResult:
        if settings.cluster and settings.dry_run:
            # A matrix runs each pair as a scenario runs all of them: the same objects.
            self._dry_run(name, tenants, settings, None, 99)
        names = [t.name for t in tenants]
        row_names = matrix_rows(names, rows)
        check_plan(settings, len(row_names) + len(matrix_groups(names, row_names, include_all)))
        with self._gpu(settings, pool=False, progress=progress) as (backend, _, _):
            result = run_matrix(
                name, tenants, settings, backend, device=self.device, include_all=include_all,
                rows=row_names, machine=machine.facts(self.device), budget=self.budget,
                progress=progress,
            )  # fmt: skip
        self.matrices.append(result)
        return result

    @contextlib.contextmanager
    def _gpu(
        self, settings: RunSettings, pool: bool = True, progress: Any = None
    ) -> Iterator[tuple[Backend, str | None, bool]]:
        """A backend whose tenants use one GPU that no other scenario is using meanwhile,
        the GPU's UUID, and whether the backend comes from the session's pool. A wait for
        the lock is told to ``progress`` (its ``note``), else to stderr."""
        from pytest_kts import gpulock

        on_wait = getattr(progress, "note", None) or _note_to_stderr

        if settings.cluster:
            yield make_backend(settings), None, False
            return
        if self.device != "cuda":
            # CPU tenants of two scenarios at once (pytest-xdist) would share the cores and
            # measure each other: one CPU scenario at a time on this machine, as one per GPU.
            with gpulock.acquire([CPU_LOCK], timeout_s=settings.budget_seconds, on_wait=on_wait):
                backend, pooled = self._backend(settings, {}, pool)
                yield backend, None, pooled
            return

        uuids = gpulock.visible_gpu_uuids()
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        prefer = int(worker[2:]) if worker[2:].isdigit() else 0
        with gpulock.acquire(
            uuids, prefer=prefer, timeout_s=settings.budget_seconds, on_wait=on_wait
        ) as lease:
            env = {}
            if lease.uuid.startswith("GPU-"):
                env["CUDA_VISIBLE_DEVICES"] = lease.uuid
            backend, pooled = self._backend(settings, env, pool)
            yield backend, lease.uuid if lease.uuid.startswith("GPU-") else None, pooled

    def _backend(
        self, settings: RunSettings, env: Mapping[str, str], pool: bool
    ) -> tuple[Backend, bool]:
        """The pooled backend for these settings where pooling applies, else a fresh one.

        Pooled, by sharing mode: time-slicing; streams (its one process takes the next
        scenario's tenants); MPS with its daemon, whose processes are MPS clients (a tenant's
        MPS limits, set in its environment, are read when its process creates its CUDA
        context: such a tenant only takes over a process started with the same ones). A pooled
        MPS daemon is stopped before a scenario of any other mode, so that no MPS server sits
        next to another mode's measurements. Not pooled: a cluster's Jobs, matrices.
        """
        key = (settings.sharing, self.device, tuple(sorted(env.items())))
        pooled = pool and not settings.cluster
        for other in [k for k in self.pool if k[0] == "mps" and not (pooled and k == key)]:
            self.pool.pop(other).close()
        if not pooled:
            return make_backend(settings, env), False
        backend = self.pool.get(key)
        if backend is None or not backend.reusable:
            backend = make_backend(settings, env, spares=POOL_SPARES)
            self.pool[key] = backend
        return backend, True

    def _drop(self, backend: Backend) -> None:
        for key, pooled in list(self.pool.items()):
            if pooled is backend:
                del self.pool[key]
        backend.close()

    def close(self) -> None:
        """Stop every pooled worker. Idempotent; the plugin calls it when pytest ends."""
        while self.pool:
            _, backend = self.pool.popitem()
            backend.close()

    def write_report(self, directory: Path, command: str | None = None) -> None:
        """Write the report; ``command`` is the command line as the user typed it."""
        from pytest_kts.report import write_report

        if command is None:
            command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        try:
            self.report_paths = write_report(
                self.results,
                directory,
                command=command,
                matrices=self.matrices,
                packings=self.packings,
                interrupted=self.interrupted,
            )
        except Exception as exc:  # the report must never take the test run's outcome with it
            self.report_error = f"could not write the report to {directory}: {exc}"

    def write_dry_run(self, directory: Path) -> Path:
        """The dry run's manifests as one YAML file (``manifests.yaml``) in ``directory``."""
        from pytest_kts import safefile

        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "manifests.yaml"
        safefile.write_text(path, self.dry_run_yaml())
        return path

    def dry_run_yaml(self) -> str:
        from pytest_kts import dryrun

        return "".join(dryrun.to_yaml(docs, f"scenario {name}") for name, docs in self.dry_runs)

    def facts(self) -> dict[str, Any]:
        return machine.facts(self.device)


def _note_to_stderr(text: str) -> None:
    print(f"kts: {text}", file=sys.stderr, flush=True)


def _telemetry_factory(gpu_uuid: str) -> Any:
    try:
        from pytest_kts.telemetry import TelemetrySampler
    except ImportError:
        return None
    if TelemetrySampler.unavailable_reason() is not None:
        return None
    return lambda: TelemetrySampler(uuid=gpu_uuid, interval_s=0.05)


def _undecided_comparison(message: str, policy: str) -> None:
    """An undecided baseline comparison under ``--kts-inconclusive``: ``warn`` lets the test
    pass with a warning (the summary also lists it), ``fail`` fails it, ``skip`` skips it,
    ``error`` raises :class:`InconclusiveError`."""
    from pytest_kts.verdict import InconclusiveError, KtsInconclusiveWarning

    hint = " (more iterations narrow the interval: --kts-iterations, or the adaptive runner)"
    if policy == "warn":
        import warnings

        warnings.warn(message + hint, KtsInconclusiveWarning, stacklevel=2)
    elif policy == "fail":
        raise RegressionError(message + " (failed by --kts-inconclusive=fail)" + hint)
    elif policy == "skip":
        import pytest

        pytest.skip(message + hint)
    else:
        raise InconclusiveError(message + hint)
