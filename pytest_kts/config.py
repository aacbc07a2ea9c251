"""Settings, resolved in one place.

Order, highest first: the ``kts(...)`` marker on a test, the command line (``--kts-*``), the
environment (``KTS_*``), the ini file (``kts_*`` in pytest.ini / pyproject.toml), the default.
Each setting is declared once in :data:`OPTIONS`; the plugin registers all of them from there.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
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


# Bounds that keep a run meaningful. No percentile needs a million samples per phase (a p99.9
# at 99% needs about 4600), and a phase shorter than MIN_PHASE_SECONDS measures little more
# than its own start barrier (0.1 s) and stop.
MAX_ITERATIONS = 1_000_000
MAX_SECONDS = 7 * 24 * 3600.0
MIN_SECONDS = 1.0
MIN_PHASE_SECONDS = 0.5
MAX_REGRESSION = 100.0
_BASELINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def _iterations(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_ITERATIONS:
        raise ValueError(f"must be an integer from 1 to {MAX_ITERATIONS}")
    return value


def check_iterations(value: object, what: str) -> int:
    """A per-tenant iteration count from Python (``kts.tenant(iterations=...)``), checked."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ITERATIONS:
        raise ConfigError(f"{what} must be an integer from 1 to {MAX_ITERATIONS}, got {value!r}")
    return value


def _float(text: str) -> float:
    """The number ``text`` spells; NaN (which every bound refuses) when it spells none."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _seconds(text: str) -> float:
    value = _float(text)
    if not MIN_SECONDS <= value <= MAX_SECONDS:  # NaN and infinity fail too
        raise ValueError(f"must be a number of seconds from {MIN_SECONDS:g} to {MAX_SECONDS:g}")
    return value


def _regression(text: str) -> float:
    value = _float(text)
    if not 1 < value <= MAX_REGRESSION:
        raise ValueError(
            f"must be a growth factor above 1 and at most {MAX_REGRESSION:g} (e.g. 1.1: fail "
            "when shared p99 grew by more than 10%)"
        )
    return value


def check_baseline_name(name: str) -> str:
    """A baseline name, which becomes a folder name: refused before anything runs."""
    if not _BASELINE_NAME.fullmatch(name):
        raise ValueError(
            f"baseline name {name!r} is not allowed: use letters, digits, '_', '-' or '.', "
            "starting with a letter or digit (it becomes a directory name)"
        )
    return name


def _baseline_name(text: str) -> str | None:
    return check_baseline_name(text) if text else None


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


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
    Option("iterations", _iterations, 800,
           "measured iterations per tenant and phase when a test sets no SLO (the study's 800)"),
    Option("round_iterations", _iterations, 100,
           "iterations per tenant in one phase of one round; solo and shared phases alternate"),
    Option("max_iterations", _iterations, 3200,
           "adaptive runs: most iterations per tenant and phase before giving up undecided"),
    Option("max_seconds", _seconds, 900.0,
           "adaptive runs: most seconds of phases per test before giving up undecided"),
    Option("budget_seconds", _seconds, 7200.0,
           "most seconds of phases for the whole session; once spent, a test stops where it "
           "is: undecided, or an error where it measured nothing"),
    Option("confidence", _confidence, 0.95,
           "confidence of every verdict (two-sided; a false fail has probability <= (1-c)/2)"),
    Option("inconclusive", _choice(*INCONCLUSIVE_POLICIES), "warn",
           "an undecided comparison: warn (holds, with a warning), fail, skip, error",
           choices=INCONCLUSIVE_POLICIES),
    Option("timeout", _seconds, 300.0,
           "seconds one phase, or a tenant's start (import, CUDA context, build, warmup), may "
           "take before its workers count as hung"),
    Option("report", _optional_str, None,
           "write summary.json, samples/*.csv, results.md (and plots) here"),
    Option("sharing", _choice(*SHARING_MODES), "timeslice",
           "how co-located tenants share the GPU locally: timeslice, mps or streams",
           choices=SHARING_MODES),
    Option("save", _baseline_name, None, "save this run's raw samples as baseline NAME"),
    Option("compare", _baseline_name, None,
           "compare with baseline NAME; a significant regression fails the test"),
    Option("baseline_dir", _optional_str, ".kts-baselines", "where baselines are stored"),
    Option("regression", _regression, 1.1,
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


def check_plan(settings: RunSettings, phases_per_round: int, *, adaptive: bool = False) -> None:
    """Refuse, before anything spawns, a plan whose phases cannot fit their time.

    The fixed protocol runs ``ceil(iterations / round_iterations)`` rounds of
    ``phases_per_round`` phases within ``max_seconds``, each phase an equal share; an adaptive
    run needs at least its calibration round and one look. A share below
    :data:`MIN_PHASE_SECONDS` would cut every phase after its start barrier: no samples, and a
    long wait for nothing.
    """
    if adaptive:
        rounds, how = 2, "an adaptive run (a calibration round and one look)"
    else:
        rounds = math.ceil(settings.iterations / settings.round_iterations)
        how = (
            f"iterations {settings.iterations} in rounds of {settings.round_iterations} "
            f"({rounds} round(s))"
        )
    phases = rounds * phases_per_round
    share = settings.max_seconds / phases
    if share < MIN_PHASE_SECONDS:
        advice = (
            "raise max_seconds"
            if adaptive
            else "lower iterations, raise round_iterations or raise max_seconds"
        )
        raise ConfigError(
            f"impossible plan: {how} makes {phases} phases of {phases_per_round} a round within "
            f"max_seconds {settings.max_seconds:g}: {share:.3g} s a phase, below the "
            f"{MIN_PHASE_SECONDS:g} s a phase needs to start, measure and stop; {advice}"
        )
