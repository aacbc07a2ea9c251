"""Settings, resolved in one place.

Order, highest first: the ``kts(...)`` marker on a test, the command line (``--kts-*``), the
environment (``KTS_*``), the ini file (``kts_*`` in pytest.ini / pyproject.toml), the default.
Each setting is declared once in :data:`OPTIONS`; the plugin registers all of them from there.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_kts.constants import (
    DEVICES,
    DRA_INTERVALS,
    DRA_SHARING,
    GPU_REQUESTS,
    INCONCLUSIVE_POLICIES,
    SHARING_MODES,
)
from pytest_kts.errors import ConfigError

__all__ = ["DEVICES", "INCONCLUSIVE_POLICIES", "OPTIONS", "SHARING_MODES", "RunSettings", "resolve"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _confidence(text: str) -> float:
    value = float(text)
    if not 0.5 <= value < 1:
        raise ValueError("must be in [0.5, 1)")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


def _percent(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise ValueError("must be a percentage, 1..100")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError("must be a fraction in (0, 1]")
    return value


def _bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _optional_str(text: str) -> str | None:
    return text or None


@dataclass(frozen=True)
class Option:
    name: str  # the RunSettings field; --kts-<name>, KTS_<NAME>, kts_<name>
    parse: Callable[[str], Any]
    default: Any
    help: str
    flag: bool = False  # a command-line switch with no value
    cluster: bool = False  # only for --kts-cluster runs
    choices: tuple[str, ...] = ()  # the allowed values, for --help (parse checks them)

    @property
    def cli(self) -> str:
        return "--kts-" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "KTS_" + self.name.upper()

    @property
    def ini(self) -> str:
        return "kts_" + self.name


OPTIONS: tuple[Option, ...] = (
    Option("device", _choice(*DEVICES), "auto",
           "where tenants run: auto (CUDA when present, else CPU), cuda, cpu", choices=DEVICES),
    Option("iterations", _positive_int, 800,
           "measured iterations per tenant and phase when a test sets no SLO (the study's 800)"),
    Option("round_iterations", _positive_int, 100,
           "iterations per tenant in one phase of one round; solo and shared phases alternate"),
    Option("max_iterations", _positive_int, 3200,
           "adaptive runs: most iterations per tenant and phase before giving up undecided"),
    Option("max_seconds", _positive_float, 900.0,
           "adaptive runs: most seconds of phases per test before giving up undecided"),
    Option("budget_seconds", _positive_float, 7200.0,
           "most seconds of phases for the whole session; later tests then stop undecided"),
    Option("confidence", _confidence, 0.95,
           "confidence of every verdict (two-sided; a false fail has probability <= (1-c)/2)"),
    Option("inconclusive", _choice(*INCONCLUSIVE_POLICIES), "warn",
           "an undecided comparison: warn (holds, with a warning), fail, skip, error",
           choices=INCONCLUSIVE_POLICIES),
    Option("timeout", _positive_float, 300.0,
           "seconds one phase may take before its workers count as hung"),
    Option("report", _optional_str, None,
           "write summary.json, samples/*.csv, results.md (and plots) here"),
    Option("sharing", _choice(*SHARING_MODES), "timeslice",
           "how co-located tenants share the GPU locally: timeslice, mps or streams",
           choices=SHARING_MODES),
    Option("save", _optional_str, None, "save this run's raw samples as baseline NAME"),
    Option("compare", _optional_str, None,
           "compare with baseline NAME; a significant regression fails the test"),
    Option("baseline_dir", _optional_str, ".kts-baselines", "where baselines are stored"),
    Option("regression", _positive_float, 1.1,
           "with --kts-compare: fail when shared p99 grew by more than this factor"),
    Option("cluster", _bool, False, "run scenarios as Kubernetes Jobs", flag=True),
    Option("namespace", str, "kts", "namespace for the Jobs", cluster=True),
    Option("image", str, "pytest-kts-worker:0.2.0", "worker container image", cluster=True),
    Option("node", _optional_str, None, "pin every Job to this node", cluster=True),
    Option("runtime_class", _optional_str, "nvidia", "RuntimeClass of the pods", cluster=True),
    Option("keep_jobs", _bool, False, "keep the Jobs after the run, for debugging", flag=True,
           cluster=True),
    Option("kubeconfig", _optional_str, None, "kubeconfig file (else KUBECONFIG or in-cluster)",
           cluster=True),
    Option("context", _optional_str, None, "kubeconfig context", cluster=True),
    Option("prometheus", _optional_str, None,
           "cluster runs: Prometheus URL for dcgm-exporter metrics of each phase", cluster=True),
    Option("dry_run", _bool, False,
           "print every manifest the run would create (YAML) and contact no cluster",
           flag=True, cluster=True),
    Option("gpu_request", _choice(*GPU_REQUESTS), "device-plugin",
           "how each pod asks for its GPU: device-plugin (nvidia.com/gpu), dra (one "
           "ResourceClaim per phase), hami (gpucores/gpumem limits), kai (gpu-fraction)",
           cluster=True, choices=GPU_REQUESTS),
    Option("dra_device_class", _optional_str, "gpu.nvidia.com",
           "dra: the DeviceClass of the claim", cluster=True),
    Option("dra_sharing", _choice(*DRA_SHARING), "default",
           "dra: the claim's GpuConfig sharing strategy (default: none, the driver decides)",
           cluster=True, choices=DRA_SHARING),
    Option("dra_interval", _choice(*DRA_INTERVALS), None,
           "dra with timeslicing: the time-slice interval", cluster=True, choices=DRA_INTERVALS),
    Option("dra_mps_threads", _percent, None,
           "dra with mps: defaultActiveThreadPercentage", cluster=True),
    Option("dra_mps_memory", _optional_str, None,
           "dra with mps: defaultPinnedDeviceMemoryLimit (a quantity, e.g. 10Gi)", cluster=True),
    Option("hami_cores", _percent, None, "hami: nvidia.com/gpucores, percent of the SMs",
           cluster=True),
    Option("hami_memory", _positive_int, None, "hami: nvidia.com/gpumem, MiB", cluster=True),
    Option("kai_fraction", _fraction, None, "kai: the gpu-fraction annotation (default 0.5)",
           cluster=True),
    Option("kai_queue", _optional_str, None,
           "kai: the kai.scheduler/queue label (default default-queue)", cluster=True),
)  # fmt: skip

OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}
# Settings a marker may override per test.
MARKER_KEYS = (
    "device", "iterations", "round_iterations", "max_iterations", "max_seconds", "confidence",
    "inconclusive", "timeout", "sharing", "gpu_request", "dra_device_class", "dra_sharing",
    "dra_interval", "dra_mps_threads", "dra_mps_memory", "hami_cores", "hami_memory",
    "kai_fraction", "kai_queue",
)  # fmt: skip


@dataclass(frozen=True)
class RunSettings:
    device: str = "auto"
    iterations: int = 800
    round_iterations: int = 100
    max_iterations: int = 3200
    max_seconds: float = 900.0
    budget_seconds: float = 7200.0
    confidence: float = 0.95
    inconclusive: str = "warn"
    timeout: float = 300.0
    report: str | None = None
    sharing: str = "timeslice"
    save: str | None = None
    compare: str | None = None
    baseline_dir: str | None = ".kts-baselines"
    regression: float = 1.1
    cluster: bool = False
    namespace: str = "kts"
    image: str = "pytest-kts-worker:0.2.0"
    node: str | None = None
    runtime_class: str | None = "nvidia"
    keep_jobs: bool = False
    kubeconfig: str | None = None
    context: str | None = None
    prometheus: str | None = None
    dry_run: bool = False
    gpu_request: str = "device-plugin"
    dra_device_class: str | None = "gpu.nvidia.com"
    dra_sharing: str = "default"
    dra_interval: str | None = None
    dra_mps_threads: int | None = None
    dra_mps_memory: str | None = None
    hami_cores: int | None = None
    hami_memory: int | None = None
    kai_fraction: float | None = None
    kai_queue: str | None = None

    @property
    def report_dir(self) -> Path | None:
        return Path(self.report) if self.report else None

    def with_marker(self, kwargs: Mapping[str, Any]) -> RunSettings:
        """This test's settings: the ``kts(...)`` marker's keywords override the session's."""
        unknown = set(kwargs) - set(MARKER_KEYS)
        if unknown:
            raise ConfigError(
                f"@pytest.mark.kts got unknown settings {sorted(unknown)}; "
                f"allowed: {', '.join(MARKER_KEYS)}"
            )
        changes = {
            k: _parse(OPTIONS_BY_NAME[k], str(v), "the kts marker") for k, v in kwargs.items()
        }
        return dataclasses.replace(self, **changes)


def _parse(option: Option, raw: Any, source: str) -> Any:
    if not isinstance(raw, str):
        raw = str(raw)
    try:
        return option.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{option.name} from {source} = {raw!r}: {exc}") from None


def resolve(
    cli: Mapping[str, Any],
    ini: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> RunSettings:
    """Command line > environment > ini > default, for every option in :data:`OPTIONS`.

    ``cli`` and ``ini`` map option names to raw values, ``None`` (or an unset flag) where the
    user gave none.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw_cli = cli.get(option.name)
        if raw_cli is not None and not (option.flag and raw_cli is False):
            values[option.name] = _parse(option, raw_cli, option.cli)
        elif environ.get(option.env) not in (None, ""):
            values[option.name] = _parse(option, environ[option.env], option.env)
        elif ini.get(option.name) not in (None, "", []):
            values[option.name] = _parse(option, ini[option.name], option.ini)
        else:
            values[option.name] = option.default
    return RunSettings(**values)
