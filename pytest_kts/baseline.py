"""Baselines: keep a run's raw samples, compare a later run with them, export for CI charts.

A baseline is the raw samples (``samples.csv``, the format of :func:`pytest_kts.samples.to_csv`)
and the machine facts (``machine.json``) of each scenario, under
``<root>/<name>/<scenario id>/``. Raw samples rather than figures, so that a comparison is
computed with the same statistics as a verdict, and a baseline can be judged again when the
statistics improve.

A comparison asks: did the shared-phase tail grow? It is the degradation machinery of
:func:`pytest_kts.verdict.degradation` with the baseline's shared samples in the place of
"solo" and the current shared samples in the place of "shared", so the ratio is
``current p99 / baseline p99`` with a block-bootstrap interval, and ``fail`` (a regression)
only when the whole interval lies above the regression threshold.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pytest_kts import safefile, sharing_env
from pytest_kts.config import check_baseline_name
from pytest_kts.errors import ConfigError, KtsError
from pytest_kts.evidence import percentile_interval
from pytest_kts.samples import TenantSamples, from_csv, to_csv
from pytest_kts.verdict import degradation

if TYPE_CHECKING:
    from pytest_kts.results import ScenarioResult

SAMPLES_FILE = "samples.csv"
# What marks a project's top folder, where a test file's path in a baseline key starts.
PROJECT_MARKERS = ("pyproject.toml", "pytest.ini", "tox.ini", "setup.cfg", "setup.py", ".git")
FACTS_FILE = "machine.json"
FORMAT = 1
DEFAULT_REGRESSION = 1.1
# Machine facts that change what a latency means; a difference is reported, not fatal.
MACHINE_KEYS = {
    "gpu_name": "GPU model",
    "driver": "NVIDIA driver",
    "cuda": "CUDA",
    "torch": "torch",
    "device": "device",
}


class Baseline(NamedTuple):
    """What :func:`load_baseline` returns: per-tenant samples, the machine they ran on, and
    how its GPU was shared (empty for a baseline saved before that was recorded)."""

    samples: dict[str, TenantSamples]
    machine: dict[str, Any]
    sharing_env: dict[str, Any]


def safe_id(scenario: str) -> str:
    """A directory name for a scenario: readable, and unique even after shortening.

    Scenario names are pytest node ids (``tests/test_gpu.py::test_fft[4096-cuda]``); the hash
    keeps two long names that share their first 80 characters apart.
    """
    return safefile.safe_name(scenario, 80, always_hash=True)


def _check_name(name: str) -> str:
    try:
        return check_baseline_name(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def baseline_path(root: Path, name: str, scenario: str) -> Path:
    return Path(root) / _check_name(name) / safe_id(scenario)


def scenario_key(path: Path, nodeid: str, baseline_root: Path) -> str:
    """What names a test's baseline wherever pytest puts its rootdir.

    A node id is relative to the rootdir, which pytest moves, e.g. when ``--kts-baseline-dir
    DIR`` comes as two words and DIR exists (DIR then counts as a path argument). The key is
    the test file's path within its project (the nearest folder upward that holds one of
    :data:`PROJECT_MARKERS`; without one, the folder that holds the baseline folder) and the
    test's name in the file: ``tests/test_gpu.py::test_fft[4096]``.
    """
    path = Path(path).resolve()
    anchor = next(
        (d for d in path.parents if any((d / m).exists() for m in PROJECT_MARKERS)),
        Path(baseline_root).resolve().parent,
    )
    where = Path(os.path.relpath(path, anchor)).as_posix()
    _, sep, test = nodeid.partition("::")
    return f"{where}::{test}" if sep else where


def _test_part(key: str) -> tuple[str, str]:
    """(file name, test name) of a key or node id: what stays when its folders change."""
    where, _, test = key.partition("::")
    return where.rsplit("/", 1)[-1], test


def saved_as(root: Path, name: str, key: str) -> str | None:
    """The key under which baseline ``name`` holds this test when not under ``key``: the same
    file name and test name saved from another folder (or under an older node id)."""
    folder = Path(root) / _check_name(name)
    wanted = _test_part(key)
    for facts_file in sorted(folder.glob(f"*/{FACTS_FILE}")):
        try:
            facts = json.loads(facts_file.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(facts, dict):
            continue
        saved = str(facts.get("key") or facts.get("scenario") or "")
        if saved and saved != key and _test_part(saved) == wanted:
            return saved
    return None


def save_baseline(result: ScenarioResult, root: Path, name: str, key: str | None = None) -> Path:
    """Store ``result``'s raw samples and machine facts as baseline ``name``; return its folder.

    ``key`` (:func:`scenario_key`) names the folder; without one, the scenario's name does.
    Saving again under the same name replaces that scenario's baseline.
    """
    directory = baseline_path(root, name, key or result.name)
    directory.mkdir(parents=True, exist_ok=True)
    samples = [t.samples for t in result.tenants.values()]
    safefile.write_text(directory / SAMPLES_FILE, to_csv(samples))
    facts = {
        "format": FORMAT,
        "scenario": result.name,
        "key": key or result.name,
        "device": result.device,
        "started_at": result.started_at,
        "machine": dict(result.machine),
        "sharing_env": result.sharing_env,
        "tenants": {
            n: {
                "workload": t.spec.workload,
                "size": t.spec.size,
                "sleep_ms": t.spec.sleep_ms,
                "meta": dict(t.meta),
            }
            for n, t in result.tenants.items()
        },
    }
    text = json.dumps(facts, indent=2, sort_keys=True, default=str)
    safefile.write_text(directory / FACTS_FILE, text + "\n")
    return directory


def load_baseline(root: Path, name: str, scenario: str, key: str | None = None) -> Baseline | None:
    """Baseline ``name`` of ``scenario`` (under ``key``, else under its name as baselines
    before keys were saved), or None when none was saved.

    The machine dict is the saved ``machine`` facts, with ``device`` added from the scenario.
    A folder that exists but cannot be read raises :class:`ConfigError` (a corrupt baseline
    should be noticed, not silently treated as missing).
    """
    for candidate in dict.fromkeys([key or scenario, scenario]):
        directory = baseline_path(root, name, candidate)
        if (directory / SAMPLES_FILE).exists() or (directory / FACTS_FILE).exists():
            break
    else:
        return None
    samples_file, facts_file = directory / SAMPLES_FILE, directory / FACTS_FILE
    try:
        if not samples_file.is_file():  # saved (its facts are there), but its samples are not
            raise ValueError(f"{SAMPLES_FILE} is missing")
        samples = from_csv(samples_file.read_text())
        if not any(len(t.shared) for t in samples.values()):
            raise ValueError(f"{SAMPLES_FILE} holds no shared-phase samples")
        facts = json.loads(facts_file.read_text()) if facts_file.is_file() else {}
        if not isinstance(facts, dict):
            raise ValueError(f"{FACTS_FILE} holds a {type(facts).__name__}, not an object")
        machine = facts.get("machine", {})
        if not isinstance(machine, dict):
            raise ValueError(
                f"{FACTS_FILE}: 'machine' is a {type(machine).__name__}, not an object"
            )
    except (ValueError, KeyError, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"unreadable baseline {name!r} of {scenario!r} in {directory} ({exc}); "
            f"delete it or save it again with --kts-save {name}"
        ) from None
    machine = dict(machine)
    machine.setdefault("device", facts.get("device"))
    return Baseline(samples, machine, dict(facts.get("sharing_env") or {}))


@dataclass(frozen=True)
class Comparison:
    """Current shared-phase percentile against the baseline's, for one tenant and clock."""

    scenario: str
    tenant: str
    clock: str
    p: float
    baseline_ms: float
    current_ms: float
    ratio: float  # current / baseline
    ci: tuple[float, float]
    threshold: float
    verdict: str  # "pass" (no regression beyond threshold), "fail" (regression), "inconclusive"
    n_baseline: int
    n_current: int
    reason: str | None = None

    @property
    def regressed(self) -> bool:
        """A significant regression: the whole interval lies above the threshold."""
        return self.verdict == "fail"

    @property
    def improved(self) -> bool:
        """The mirror image: the whole interval lies below ``1 / threshold``."""
        return self.ci[1] < 1.0 / self.threshold

    def describe(self) -> str:
        if self.n_baseline == 0 and self.n_current == 0 and self.reason:
            return f"{self.tenant}: {self.reason}"  # nothing to estimate (_not_compared)
        lo, hi = self.ci
        text = (
            f"{self.tenant}: shared p{self.p:g} ({self.clock}) {self.current_ms:.3f} ms vs "
            f"baseline {self.baseline_ms:.3f} ms = {self.ratio:.2f}x [{lo:.2f}, {hi:.2f}]"
        )
        if self.regressed:
            return f"{text}: regression beyond {self.threshold:g}x"
        if self.verdict == "pass":
            return f"{text}: {'improved' if self.improved else 'no regression'}"
        return f"{text}: undecided against {self.threshold:g}x" + (
            f" ({self.reason})" if self.reason else ""
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "tenant": self.tenant,
            "clock": self.clock,
            "p": self.p,
            "baseline_ms": self.baseline_ms,
            "current_ms": self.current_ms,
            "ratio": self.ratio,
            "ci": list(self.ci),
            "threshold": self.threshold,
            "verdict": self.verdict,
            "n_baseline": self.n_baseline,
            "n_current": self.n_current,
            "reason": self.reason,
        }


def _pick_clock(before: TenantSamples, now: TenantSamples, preferred: str) -> str | None:
    order = [preferred, *(c for c in ("host", "device") if c != preferred)]
    for clock in order:
        if before.shared.has_clock(clock) and now.shared.has_clock(clock):
            return clock
    return None


def compare(
    result: ScenarioResult,
    baseline: Baseline | Mapping[str, TenantSamples],
    *,
    threshold: float = DEFAULT_REGRESSION,
    p: float = 99,
    clock: str = "host",
    confidence: float | None = None,
) -> list[Comparison]:
    """Compare each tenant's shared phase with the baseline's; one :class:`Comparison` each.

    ``clock`` is used where both runs have it, else the other clock (v1 logs and old baselines
    carry only the device clock). A tenant of this run that the baseline lacks is not compared
    (the caller says so); one that cannot be compared (no shared samples on a side, no clock
    in common) gets an undecided comparison that says why, never a silent skip.
    """
    if not threshold > 0:
        raise ConfigError(f"regression threshold must be positive, got {threshold}")
    before_all = baseline.samples if isinstance(baseline, Baseline) else baseline
    level = confidence if confidence is not None else result.confidence
    out = []
    for name, tenant in result.tenants.items():
        before, now = before_all.get(name), tenant.samples
        if before is None:
            continue
        used = _pick_clock(before, now, clock)
        if used is None:
            why = (
                "no shared-phase samples on one side"
                if not (len(before.shared) and len(now.shared))
                else "no clock in common"
            )
            out.append(_not_compared(result.name, name, clock, p, threshold, why))
            continue
        b, c = before.shared, now.shared
        try:
            df = degradation(
                b.latency(used),
                c.latency(used),
                p=p,
                confidence=level,
                clock=used,
                solo_segments=b.segments(),
                shared_segments=c.segments(),
                paired=False,  # two runs at different times: their rounds are not pairs
            )
        except KtsError as exc:  # nothing finite on one side
            out.append(_not_compared(result.name, name, used, p, threshold, str(exc)))
            continue
        out.append(
            Comparison(
                scenario=result.name,
                tenant=name,
                clock=used,
                p=p,
                baseline_ms=df.solo_quantile,
                current_ms=df.shared_quantile,
                ratio=df.value,
                ci=(float(df.ci[0]), float(df.ci[1])),
                threshold=threshold,
                verdict=df.verdict(threshold),
                n_baseline=df.n_solo,
                n_current=df.n_shared,
                reason=df.reason,
            )
        )
    return out


def _not_compared(
    scenario: str, tenant: str, clock: str, p: float, threshold: float, why: str
) -> Comparison:
    nan = math.nan
    return Comparison(
        scenario,
        tenant,
        clock,
        p,
        nan,
        nan,
        nan,
        (nan, nan),
        threshold,
        "inconclusive",
        0,
        0,
        reason=f"not compared: {why}",
    )


def missing_tenants(result: ScenarioResult, baseline: Baseline) -> tuple[list[str], list[str]]:
    """(tenants the baseline has and this run lacks, tenants this run has and it lacks)."""
    saved, now = set(baseline.samples), set(result.tenants)
    return sorted(saved - now), sorted(now - saved)


def sharing_mismatch(current: Mapping[str, Any], baseline: Mapping[str, Any]) -> str | None:
    """One line when the baseline's GPU was shared otherwise (time slice, compute or MIG mode,
    driver, MPS or HAMi settings), else None. A comparison across such a difference cannot
    say whether the code or the setting moved the tail, so it is reported and not gated."""
    changed = sharing_env.differences(current, baseline)
    if not changed:
        return None
    return (
        f"baseline sharing environment differs ({'; '.join(changed)}): the comparison is "
        "reported, not gated"
    )


def machine_mismatches(current: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[str]:
    """Plain-language differences in the facts that change what a latency means."""
    out = []
    for key, label in MACHINE_KEYS.items():
        now, before = current.get(key), baseline.get(key)
        if now in (None, "") or before in (None, ""):
            continue
        if str(now) != str(before):
            out.append(f"{label} differs: baseline {before!r}, now {now!r}")
    return out


# -- github-action-benchmark ----------------------------------------------------------------------


def _percentile_with_range(
    values: np.ndarray, segments: np.ndarray, p: float
) -> tuple[float, tuple[float, float] | None, int]:
    """The percentile the statistics use (warmup trimmed), its 95% interval (none below the
    sample floor: no upper end exists there), and n."""
    finite = np.isfinite(np.asarray(values, dtype=np.float64))
    if finite.sum() < 20:
        return math.nan, None, int(finite.sum())
    q, lo, hi, n = percentile_interval(values, segments, p, 0.95)
    return q, ((lo, hi) if math.isfinite(hi) and lo > 0 else None), n


def _range(value: float, bounds: tuple[float, float] | None) -> str | None:
    """github-action-benchmark's free-form ``range``: both ends of an asymmetric interval."""
    if bounds is None:
        return None
    lo, hi = bounds
    return f"-{value - lo:.4g} / +{hi - value:.4g}"


def _entry(name: str, unit: str, value: float, span: str | None, extra: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "unit": unit, "value": round(value, 6)}
    if span is not None:
        entry["range"] = span
    entry["extra"] = extra
    return entry


def _tenant_entries(result: ScenarioResult, name: str, p: float) -> Iterable[dict[str, Any]]:
    tenant = result.tenants[name]
    shared = tenant.samples.shared
    checked = {c.p for c in result.checks if c.tenant == name}
    for clock in ("host", "device"):
        if not shared.has_clock(clock):
            continue
        q, bounds, n = _percentile_with_range(shared.latency(clock), shared.segments(), p)
        if not math.isfinite(q):
            continue
        yield _entry(
            f"{result.name}/{name}/shared p{p:g} ({clock})",
            "ms",
            q,
            _range(q, bounds),
            f"n={n} shared-phase iterations after warmup, device={result.device}"
            + ("" if bounds is None else f", 95% CI [{bounds[0]:.4g}, {bounds[1]:.4g}] ms")
            + ("" if bounds is not None else ", no upper bound yet (too few samples)"),
        )
        if name in result.background:
            continue  # a background tenant's DF is not a verdict (one short solo profile)
        for q_p in sorted({p, *checked}):
            try:
                df = tenant.df(q_p, clock)
            except KtsError:
                df = None
            if df is None or not math.isfinite(df.value):
                continue
            yield _df_entry(result, name, clock, df)


def _df_entry(result: ScenarioResult, name: str, clock: str, df: Any) -> dict[str, Any]:
    """A DF entry: the same interval, label and n as the assertion and the other reports."""
    lo, hi = df.ci
    bounds = (lo, hi) if df.bounded else None
    ev = df.evidence
    look = f" ({ev.look_note()})" if ev.look_note() else ""
    return _entry(
        f"{result.name}/{name}/DF p{df.p:g} ({clock})",
        "x",
        df.value,
        _range(df.value, bounds),
        f"{ev.label()} CI {df.interval(3)}{look}, solo p{df.p:g}={df.solo_quantile:.4g} ms, "
        f"shared p{df.p:g}={df.shared_quantile:.4g} ms, n={df.n_solo}/{df.n_shared} after "
        f"warmup" + (f"; {df.reason}" if df.reason else ""),
    )


def github_benchmark_json(results: Sequence[ScenarioResult], p: float = 99) -> list[dict[str, Any]]:
    """Entries for github-action-benchmark's ``customSmallerIsBetter`` tool.

    Per tenant and clock: the shared-phase percentile (unit ``ms``) and the DF (unit ``x``).
    ``range`` is the half-width of a 95% interval; ``extra`` carries n and the figures behind
    the value. Write with ``json.dump(github_benchmark_json(results), f)``.
    """
    return [entry for r in results for name in r.tenants for entry in _tenant_entries(r, name, p)]
