"""Typed errors. Each message says what happened and what to do next."""

from __future__ import annotations


class KtsError(Exception):
    """Base of every error pytest-kts raises on purpose."""


class ConfigError(KtsError):
    """A setting or a tenant declaration that cannot work."""


class NoDeviceError(KtsError):
    """CUDA was asked for and there is none."""


class WorkerError(KtsError):
    """A worker crashed, hung, ran out of memory or printed nothing usable.

    ``stderr_tail`` holds the last lines of its standard error, for the test report.
    """

    def __init__(self, tenant: str, what: str, stderr_tail: str = "", *, oom: bool = False) -> None:
        self.tenant = tenant
        self.what = what
        self.stderr_tail = stderr_tail
        self.oom = oom
        message = f"tenant {tenant!r}: {what}"
        if stderr_tail.strip():
            message += "\n--- last lines of its stderr ---\n" + stderr_tail.rstrip()
        super().__init__(message)


class ColocationError(KtsError):
    """Tenants of a shared phase did not run on the same physical GPU."""


class ClusterError(KtsError):
    """The Kubernetes cluster could not be reached, or a Job failed or could not be scheduled."""


class StatisticsError(KtsError, ValueError):
    """Inputs that no statistic can be computed from (empty, non-finite)."""


class RegressionError(KtsError, AssertionError):
    """This run is significantly slower than a saved baseline (``--kts-compare``)."""


class DryRun(KtsError):
    """``--kts-dry-run``: the scenario's manifests were rendered instead of run; the test stops
    here and is reported as skipped."""


class KtsNotRunWarning(UserWarning):
    """A test declared tenants and never ran them: it measured nothing."""
