"""The report: one terminal table for every scenario, and files a person or a program reads.

One file on purpose: the table, ``summary.json`` and ``results.md`` are three renderings of the
same ScenarioResult that share their cells (``_num``, ``_df_cell``, ``_rows``, the interval
notes); splitting them would scatter one format over several modules.

``render_table`` prints tenant, phase, clock, percentiles, jitter, throughput and DF with its
confidence interval. ``write_report`` writes ``summary.json`` (figures and machine facts),
``samples/<scenario>.csv`` (every iteration, to judge again offline), plots where matplotlib is
installed, and ``results.md`` for a person.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tabulate import tabulate

from pytest_kts import safefile, sharing_env
from pytest_kts.backends.startup import describe as describe_startup
from pytest_kts.matrix import MatrixResult
from pytest_kts.packing import PackingResult
from pytest_kts.plots import write_heatmap, write_plots
from pytest_kts.results import Assertion, CheckOutcome, ScenarioResult, TenantResult
from pytest_kts.samples import to_csv
from pytest_kts.stats import Summary
from pytest_kts.verdict import DegradationFactor, interval_text

if TYPE_CHECKING:
    from pytest_kts.telemetry import PhaseTelemetry

PERCENTILES = (50, 95, 99, 99.9)
# Rates and jitter from fewer samples than this are not figures.
MIN_RATE_N = 20
# The marker of the row whose check decided (or left undecided) the test.
DECIDING = "<-"


def _headers(p: float, label: str) -> list[str]:
    return [
        "tenant", "phase", "clock", "n", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "jitter",
        "it/s", f"DF p{p:g} [{label} CI]", "asserted", "tail taken by",
    ]  # fmt: skip


def slug(name: str) -> str:
    """A scenario's file and folder name in the report: its own, inside the report folder."""
    return safefile.safe_name(name, 120)


def _num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def enough(n: int, p: float) -> bool:
    """Whether ``n`` samples hold a ``p``-th percentile that is not simply their maximum (at
    least one sample above it): p99 needs 100, p99.9 1000."""
    return n * (1.0 - p / 100.0) >= 1.0


def _pct(s: Summary, p: float, value: float) -> str:
    return _num(value) if enough(s.n, p) else "n/a"


def _df_cell(df: DegradationFactor | None) -> str:
    """The DF with the interval its verdict used; a missing end is said in words and starred
    (the note below the table says why). ``n/a (n=40)`` where a phase holds too few samples
    for the percentile at all."""
    if df is None or not math.isfinite(df.value):
        return "-"
    n = min(df.n_solo, df.n_shared)
    if not enough(n, df.p):
        return f"n/a (n={n})"
    return f"{df.value:.2f} {df.interval()}" + ("" if df.reason is None else "*")


def _checks_for(result: ScenarioResult, tenant: str) -> list[CheckOutcome]:
    return [c for c in result.checks if c.tenant == tenant]


def _check_p(result: ScenarioResult) -> float:
    ps = {c.p for c in result.checks}
    return ps.pop() if len(ps) == 1 else 99.0


def _interval_notes(result: ScenarioResult) -> list[str]:
    notes = []
    p = _check_p(result)
    for name, tenant in _ordered(result):
        if _background(result, name):
            continue
        for clock in tenant.clocks():
            df = tenant.df(p, clock)
            if (
                df is not None
                and df.reason is not None
                and enough(min(df.n_solo, df.n_shared), df.p)
            ):
                notes.append(f"* {name} ({clock}): {df.reason}")
    return notes


def _ordered(result: ScenarioResult) -> list[tuple[str, TenantResult]]:
    """SLO tenants first (in the order of their checks), then the others as declared."""
    first = list(dict.fromkeys(c.tenant for c in result.checks))
    rest = [n for n in result.tenants if n not in first]
    return [(n, result.tenants[n]) for n in [*first, *rest]]


def _background(result: ScenarioResult, name: str) -> bool:
    """A tenant without an SLO in an adaptive run: it ran through the shared phases and got
    one short solo profile; its figures are context, not verdicts."""
    return name in result.background


def _said(tenant: TenantResult | None, p: float, clock: str) -> list[Assertion]:
    """The comparisons a test made on one of ``tenant``'s DFs."""
    if tenant is None:
        return []
    return [a for a in tenant.assertions if a.clock == clock and a.p == p]


def _asserted(result: ScenarioResult, tenant: TenantResult, p: float, clock: str) -> str:
    said = _said(tenant, p, clock)
    if said:
        return "; ".join(a.text() for a in said)
    checks = [c for c in _checks_for(result, tenant.name) if c.clock == clock and c.p == p]
    return "; ".join(f"SLO < {c.threshold:g}: {c.verdict}" for c in checks)


def _rows(result: ScenarioResult) -> list[list[str]]:
    rows: list[list[str]] = []
    p = _check_p(result)
    for name, tenant in _ordered(result):
        background = _background(result, name)
        deciding = {c.clock for c in _checks_for(result, name)}
        for clock in ("host", "device"):
            if clock not in tenant.clocks() or (background and clock != "host"):
                continue
            for phase in ("solo", "shared"):
                s = tenant.summary(phase, clock)
                if s is None or (background and phase == "solo"):
                    continue
                shared = phase == "shared"
                df_cell = ""
                if shared:
                    df_cell = (
                        "n/a (background)" if background else _df_cell(tenant.df(p, clock))
                    ) + (f" {DECIDING}" if clock in deciding else "")
                rows.append(
                    [
                        name + (" (background)" if background else ""),
                        phase,
                        clock,
                        str(s.n),
                        _pct(s, 50, s.p50),
                        _pct(s, 95, s.p95),
                        _pct(s, 99, s.p99),
                        _pct(s, 99.9, s.p999),
                        _num(s.jitter, 2) if enough(s.n, 99) else "n/a",
                        _num(s.throughput, 1) if s.n >= MIN_RATE_N else "n/a",
                        df_cell,
                        _asserted(result, tenant, p, clock) if shared else "",
                        _blame_cell(result, tenant) if shared and clock == "host" else "",
                    ]
                )
    return rows


def _blame_cell(result: ScenarioResult, tenant: TenantResult) -> str:
    if len(result.tenants) < 2 or _background(result, tenant.name):
        return ""
    return tenant.attribution(p=_check_p(result)).cell()


def _background_note(result: ScenarioResult) -> str | None:
    names = [n for n in result.tenants if _background(result, n)]
    if not names:
        return None
    return (
        f"background (no SLO, shown shared only): {', '.join(names)}: they ran through every "
        "shared phase and got one short solo profile each, so their DFs are not verdicts"
    )


def _attribution_lines(result: ScenarioResult) -> list[str]:
    """One line per tenant: what its tail grew from (wait vs execution). A background tenant
    (no SLO, one short solo profile) gets none here: its split is context, kept in
    ``results.md`` and ``summary.json``, and the terminal is for the tenants a test gates."""
    lines = []
    for name, tenant in result.tenants.items():
        if _background(result, name):
            continue
        split = tenant.wait_split()
        if split is not None:
            lines.append(
                f"  {name}: {split.sentence()} (launch cost {split.launch_ms:.3f} ms subtracted)"
            )
    if not lines and result.device != "cuda" and len(result.tenants) > 1:
        lines.append("  wait vs execution: no device clock on this run, so no split")
    return lines


def line_warnings(result: ScenarioResult) -> list[str]:
    """A line per tenant whose worker's stream carried records in another's name (dropped)."""
    out = []
    for name, tenant in result.tenants.items():
        n = int(tenant.accounting.get("misaddressed", 0) or 0)
        if not n:
            continue
        named = tenant.accounting.get("misaddressed_to") or {}
        whom = ", ".join(f"{t!r} ({k})" for t, k in sorted(named.items()))
        examples = tenant.accounting.get("misaddressed_examples") or []
        out.append(
            f"tenant {name!r}: {n} line(s) from its worker named another tenant, phase or "
            f"round ({whom}) and were dropped, not counted as anyone's samples"
            + (f"; e.g. {examples[0]}" if examples else "")
        )
    return out


def _head(result: ScenarioResult) -> str:
    return (
        f"{result.name}  [{result.device}, {result.gpu_seconds:.1f} s of phases; "
        f"{result.stop_reason}]"
    )


def render_table(results: Sequence[ScenarioResult], *, fmt: str = "simple") -> str:
    blocks = []
    for result in results:
        label = f"{100 * result.confidence:.4g}%"
        table = tabulate(_rows(result), headers=_headers(_check_p(result), label), tablefmt=fmt)
        notes = list(_attribution_lines(result))
        if note := _background_note(result):
            notes.append(f"  {note}")
        notes += [f"  {n}" for n in _interval_notes(result)]
        if started := describe_startup(result.backend.get("startup")):
            notes.append(f"  {started}")
        notes += [f"  warning: {w}" for w in [*result.warnings, *line_warnings(result)]]
        blocks.append("\n".join([_head(result), table, *notes]))
    return "\n\n".join(blocks)


# -- what the terminal summary says after the tables ---------------------------------------------


def check_line(result: ScenarioResult, c: CheckOutcome) -> str:
    """One undecided SLO check: where, the estimate with its interval, and why undecided."""
    estimate = "no estimate" if c.df is None else f"{c.df.value:.2f} {c.interval()}"
    label = f"{100 * result.confidence:.4g}%"
    why = c.reason or f"the {label} interval does not exclude the threshold {c.threshold:g}"
    line = (
        f"{result.name} {c.tenant}: DF p{c.p:g} ({c.clock}) {estimate} vs "
        f"{c.threshold:g} at look {c.looks}: {why}"
    )
    if c.power:
        line += f"; {c.power}"
    return line


def _outcome(result: ScenarioResult, c: CheckOutcome) -> tuple[str, str]:
    """The test's outcome for one check: what the test asserted (if it did) and the verdict."""
    said = _said(result.tenants.get(c.tenant), c.p, c.clock)
    if said:
        return _said_outcome(said), "; ".join(a.text() for a in said)
    return c.verdict, f"SLO < {c.threshold:g}"


def _said_outcome(said: Sequence[Assertion]) -> str:
    """What a test's comparisons on one DF came to: FAILED, UNDECIDED (held only by the warn
    policy) or held."""
    if not all(a.held for a in said):
        return "FAILED"
    return "UNDECIDED" if any(a.undecided for a in said) else "held"


def check_summary_lines(
    results: Sequence[ScenarioResult], report_dir: Path | None = None
) -> list[tuple[str, dict[str, bool]]]:
    """One line per check of every test, at the end of the session: tenant, clock, DF with
    its interval against the threshold, the outcome, the cause and where its plot is. A check
    is an SLO the run gated on, or an ``assert_df`` comparison no SLO covers (a fixed-protocol
    test, or an assertion at another percentile or clock): a test that failed on one is named
    here too."""
    out: list[tuple[str, dict[str, bool]]] = []
    for r in results:
        for c in r.checks:
            outcome, said = _outcome(r, c)
            out.append(_summary_line(r, c.tenant, c.p, c.clock, c.df, f"{c.threshold:g}", outcome,
                                     said, c.verdict == "fail", report_dir))  # fmt: skip
        covered = {(c.tenant, c.p, c.clock) for c in r.checks}
        for name, tenant in r.tenants.items():
            groups: dict[tuple[float, str], list[Assertion]] = {}
            for a in tenant.assertions:
                if (name, a.p, a.clock) not in covered:
                    groups.setdefault((a.p, a.clock), []).append(a)
            for (p, clock), said_ in groups.items():
                thresholds = " and ".join(dict.fromkeys(f"{a.threshold:g}" for a in said_))
                out.append(
                    _summary_line(
                        r, name, p, clock, tenant.df(p, clock), thresholds, _said_outcome(said_),
                        "; ".join(a.text() for a in said_),
                        any(a.verdict == "fail" for a in said_), report_dir,
                    )
                )  # fmt: skip
    if out:
        out.insert(0, (f"kts: {len(out)} check(s), one line each:", {}))
    return out


def _summary_line(
    r: ScenarioResult,
    name: str,
    p: float,
    clock: str,
    df: DegradationFactor | None,
    threshold: str,
    outcome: str,
    said: str,
    grew: bool,
    report_dir: Path | None,
) -> tuple[str, dict[str, bool]]:
    tenant = r.tenants.get(name)
    cause = ""
    if tenant is not None and grew:
        cell = tenant.attribution(p=p).cell() if tenant.cotenants else ""
        split = tenant.wait_split(p)
        dominant = split.dominant() if split is not None else None
        cause = "; cause: " + ", ".join(x for x in (cell, f"{dominant}" if dominant else "") if x)
    figure = (
        f"; plot: {report_dir / 'plots' / slug(r.name) / 'degradation.png'}"
        if report_dir is not None
        else ""
    )
    estimate = (
        "no estimate" if df is None else f"{df.value:#.3g} {df.interval(3, significant=True)}"
    )
    colour = {"held": "green", "pass": "green", "FAILED": "red", "fail": "red"}.get(
        outcome, "yellow"
    )
    return (
        f"  {outcome:>12}  {r.name} {name} ({clock}) DF p{p:g} {estimate} "
        f"vs {threshold} ({said}){cause}{figure}",
        {colour: True},
    )


def comparison_line(result: ScenarioResult, c: dict[str, Any]) -> str:
    """One baseline comparison: regression, no regression or undecided, with its estimate."""
    ratio = c.get("ratio")
    ci = c.get("ci") or [None, None]
    estimate = "-" if ratio is None else f"{ratio:.2f}x {interval_text(ci[0], ci[1])}"
    verdict = {"fail": "REGRESSION", "pass": "no regression"}.get(c["verdict"], "undecided")
    line = (
        f"{result.name} {c['tenant']}: shared p{c['p']:g} ({c['clock']}) "
        f"{_num(c.get('current_ms'))} ms vs {_num(c.get('baseline_ms'))} ms = {estimate}: "
        f"{verdict} (threshold {c['threshold']:g}x)"
    )
    if c["verdict"] not in ("pass", "fail") and c.get("reason"):
        line += f": {c['reason']}"
    return line


def summary_lines(results: Sequence[ScenarioResult]) -> list[tuple[str, dict[str, bool]]]:
    """Lines (with terminal markup) for every undecided check, every baseline comparison and
    every baseline saved: a person reads them in the summary, not in pytest's warnings list."""
    out: list[tuple[str, dict[str, bool]]] = []
    undecided = [(r, c) for r in results for c in r.checks if c.verdict == "inconclusive"]
    if undecided:
        out.append((f"kts: {len(undecided)} SLO check(s) undecided:", {"yellow": True}))
        out += [(f"  {check_line(r, c)}", {"yellow": True}) for r, c in undecided]
    for r in results:
        if not r.comparisons:
            continue
        name = r.comparisons[0].get("baseline", "")
        gated = all(c.get("gated", True) for c in r.comparisons)
        why = "" if gated else " (not gated: its sharing environment differs)"
        out.append((f"kts: compared with baseline {name!r}{why}:", {}))
        for c in r.comparisons:
            colour = {"fail": "red", "pass": "green"}.get(c["verdict"], "yellow")
            out.append((f"  {comparison_line(r, c)}", {colour: True}))
    for r in results:
        if r.baseline_saved:
            out.append((f"kts: {r.name}: baseline saved to {r.baseline_saved}", {}))
    return out


def render_matrices(matrices: Sequence[MatrixResult], fmt: str = "simple") -> str:
    blocks = []
    for m in matrices:
        head = f"{m.name}  [contention matrix, {m.device}, {m.gpu_seconds:.1f} s of phases]"
        tables = [m.table(99, "host", fmt)]
        if m.device == "cuda":
            tables.append(m.table(99, "device", fmt))
        blocks.append(head + "\n" + "\n\n".join(tables))
    return "\n\n".join(blocks)


# -- summary.json --------------------------------------------------------------------------


def _summary_dict(s: Summary | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {k: _json_num(v) for k, v in s.__dict__.items()}


def _json_num(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _df_dict(df: DegradationFactor | None) -> dict[str, Any] | None:
    if df is None:
        return None
    return {
        "value": _json_num(float(df.value)),
        "ci": [_json_num(float(df.ci[0])), _json_num(float(df.ci[1]))],
        "confidence": df.confidence,
        "n_solo": df.n_solo,
        "n_shared": df.n_shared,
        "trimmed_solo": df.trimmed_solo,
        "trimmed_shared": df.trimmed_shared,
        "solo_quantile": _json_num(float(df.solo_quantile)),
        "shared_quantile": _json_num(float(df.shared_quantile)),
        "method": df.method,
        "reason": df.reason,
    }


def tenant_dict(tenant: TenantResult) -> dict[str, Any]:
    spec = tenant.spec
    phases = {
        phase: {clock: _summary_dict(tenant.summary(phase, clock)) for clock in tenant.clocks()}
        for phase in ("solo", "shared")
    }
    dfs = {
        clock: {f"p{p:g}": _df_dict(tenant.df(p, clock)) for p in PERCENTILES}
        for clock in tenant.clocks()
    }
    return {
        "spec": {
            "workload": spec.workload,
            "size": spec.size,
            "sleep_ms": spec.sleep_ms,
            "warmup": spec.warmup,
            "arrival": spec.arrival,
            "rate_hz": spec.rate_hz,
            "params": dict(spec.params),
        },
        "meta": tenant.meta,
        "lines": tenant.accounting,
        "phases": phases,
        "df": dfs,
        **_attribution_dict(tenant),
    }


def _attribution_dict(tenant: TenantResult) -> dict[str, Any]:
    split = tenant.wait_split()
    out: dict[str, Any] = {
        "wait_split": split.to_dict() if split else {"reason": tenant.split_reason()},
    }
    if tenant.cotenants:
        out["attribution"] = {
            clock: tenant.attribution(clock=clock).to_dict()
            for clock in ("host", "device")
            if clock == "host" or "device" in tenant.clocks()
        }
    return out


def scenario_dict(result: ScenarioResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": result.name,
        "device": result.device,
        "started_at": result.started_at,
        "gpu_seconds": round(result.gpu_seconds, 3),
        "stop_reason": result.stop_reason,
        "confidence": result.confidence,
        "checks": [c.to_dict() for c in result.checks],
        "machine": result.machine,
        "sharing_env": result.sharing_env,
        "backend": result.backend,
        "windows": [
            {
                "phase": w.phase,
                "round": w.round,
                "tenants": list(w.tenants),
                "started_ns": w.started_ns,
                "ended_ns": w.ended_ns,
            }
            for w in result.windows
        ],
        "tenants": {name: tenant_dict(t) for name, t in result.tenants.items()},
        "warnings": [*result.warnings, *line_warnings(result)],
        "baseline_comparisons": result.comparisons,
        "baseline_saved": result.baseline_saved,
        "samples_csv": f"samples/{slug(result.name)}.csv",
    }
    if result.telemetry is not None:
        out["telemetry"] = {
            phase: t.to_dict() for phase, t in result.telemetry.by_phase(result.windows).items()
        }
    return out


# -- files ---------------------------------------------------------------------------------


# What a report folder holds that write_report owns: each is replaced (or removed) as a whole.
REPORT_ENTRIES = ("results.md", "summary.json", "benchmark.json", "samples", "plots")


def write_report(
    results: Sequence[ScenarioResult],
    directory: Path,
    *,
    command: str | None = None,
    plots: bool = True,
    matrices: Sequence[MatrixResult] = (),
    packings: Sequence[PackingResult] = (),
    interrupted: str | None = None,
) -> list[Path]:
    """Write every artifact for ``results`` under ``directory``; return the paths written.

    ``packings`` (``kts.packing``) and ``interrupted`` (the test a Ctrl-C or SIGTERM stopped)
    are said in ``results.md`` and ``summary.json`` too.

    Everything is written into a fresh folder inside ``directory`` first and moved into place
    only once all of it is written, replacing the previous report's entries
    (:data:`REPORT_ENTRIES`) as wholes: a write that fails raises and leaves the previous report
    as it was, never a mix of old and new files. Other files in ``directory`` are left alone.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".kts-report-", dir=directory))
    try:
        written = _write_files(results, staging, command, plots, matrices, packings, interrupted)
        _move_into_place(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [directory / p.relative_to(staging) for p in written]


def _holds_a_report(directory: Path) -> bool:
    """Whether ``directory``'s summary.json is one write_report wrote (its entries are ours)."""
    path = directory / "summary.json"
    if path.is_symlink():  # planted: never read through, and not ours
        return False
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "scenarios" in summary and "generated_at" in summary


def _move_into_place(staging: Path, directory: Path) -> None:
    """Swap the staged entries in for the old ones; put the old ones back if a rename fails."""
    # A symlink at one of our names is replaced as itself (its target is never touched).
    present = [
        e for e in REPORT_ENTRIES if (directory / e).exists() and not (directory / e).is_symlink()
    ]
    if present and not _holds_a_report(directory):
        # Someone's own samples/ or plots/: replacing them would delete what is not ours.
        raise FileExistsError(
            errno.EEXIST,
            f"holds {', '.join(present)} but no pytest-kts report; choose an empty folder",
            str(directory),
        )
    old = staging / ".previous"
    old.mkdir()
    moved_out: list[str] = []
    moved_in: list[str] = []
    try:
        for entry in REPORT_ENTRIES:
            if os.path.lexists(directory / entry):
                os.rename(directory / entry, old / entry)
                moved_out.append(entry)
        for entry in REPORT_ENTRIES:
            if os.path.lexists(staging / entry):
                os.rename(staging / entry, directory / entry)
                moved_in.append(entry)
    except OSError:
        for entry in moved_in:
            with contextlib.suppress(OSError):
                os.rename(directory / entry, staging / entry)
        for entry in moved_out:
            with contextlib.suppress(OSError):
                os.rename(old / entry, directory / entry)
        raise


def _write_files(
    results: Sequence[ScenarioResult],
    directory: Path,
    command: str | None,
    plots: bool,
    matrices: Sequence[MatrixResult],
    packings: Sequence[PackingResult] = (),
    interrupted: str | None = None,
) -> list[Path]:
    (directory / "samples").mkdir(exist_ok=True)
    written: list[Path] = []
    figures: dict[str, list[Path]] = {}
    for result in results:
        path = directory / "samples" / f"{slug(result.name)}.csv"
        safefile.write_text(path, to_csv(result.tenants[t].samples for t in result.tenants))
        written.append(path)
        if result.telemetry is not None:
            tpath = directory / "samples" / f"{slug(result.name)}.telemetry.csv"
            safefile.write_text(tpath, result.telemetry.to_csv())
            written.append(tpath)
        if plots:
            figures[result.name] = _plots(result, directory / "plots")
            written += figures[result.name]
    summary = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "interrupted": interrupted,
        "scenarios": [scenario_dict(r) for r in results],
        "matrices": [matrix_dict(m) for m in matrices],
        "packings": [p.to_dict() for p in packings],
    }
    heatmaps = {m.name: _heatmap(m, directory / "plots") if plots else [] for m in matrices}
    written += [p for paths in heatmaps.values() for p in paths]
    safefile.write_text(
        directory / "summary.json", json.dumps(summary, indent=2, default=str) + "\n"
    )
    written.append(directory / "summary.json")
    if results:
        from pytest_kts.baseline import github_benchmark_json

        # The customSmallerIsBetter format that GitHub's benchmark-tracking actions read.
        path = directory / "benchmark.json"
        safefile.write_text(path, json.dumps(github_benchmark_json(results), indent=2) + "\n")
        written.append(path)
    markdown = render_markdown(results, command, figures, directory)
    if interrupted:
        markdown = markdown.replace(
            "# pytest-kts results\n",
            f"# pytest-kts results\n\n**Interrupted:** {interrupted}: that test's scenario was "
            "stopped mid-phase and has no verdict.\n",
            1,
        )
    if packings:
        markdown += "\n## Packing\n\n" + "".join(
            f"- {p.name}: {p.sentence()} ({p.seconds:.0f} s of phases)\n" for p in packings
        )
    if matrices:
        markdown += "\n" + render_matrices_markdown(matrices, heatmaps, directory)
    safefile.write_text(directory / "results.md", markdown)
    written.append(directory / "results.md")
    return written


def matrix_dict(m: MatrixResult) -> dict[str, Any]:
    """The contention matrix with each cell's interval and samples, not point estimates only."""
    clocks = ["host", "device"] if m.device == "cuda" else ["host"]

    def cell(df: DegradationFactor | None) -> dict[str, Any] | None:
        if df is None:
            return None
        return {
            "value": _json_num(df.value),
            "ci": [_json_num(df.ci[0]), _json_num(df.ci[1])],
            "interval": df.interval(3),
            "confidence_label": df.evidence.label(),
            "n_solo": df.n_solo,
            "n_shared": df.n_shared,
            "reason": df.reason,
        }

    return {
        "name": m.name,
        "device": m.device,
        "started_at": m.started_at,
        "gpu_seconds": round(m.gpu_seconds, 3),
        "cut_phases": m.cut_phases,
        "rows": m.rows,
        "columns": m.columns(),
        "df_p99": {c: [[_json_num(v) for v in row] for row in m.values(99, c)] for c in clocks},
        "cells_p99": {c: [[cell(df) for df in row] for row in m.cells(99, c)] for c in clocks},
        "machine": m.machine,
    }


def _md_text(text: str) -> str:
    """A test id as Markdown text: its ``<``, ``>`` and ``&`` (a parametrized id can hold any)
    escaped, so no renderer takes them for HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_matrices_markdown(
    matrices: Sequence[MatrixResult], heatmaps: dict[str, list[Path]], root: Path
) -> str:
    out = []
    for m in matrices:
        out += [f"## Contention matrix: {_md_text(m.name)}", ""]
        out += [
            f"{len(m.tenants)} tenants on {m.device}, {m.gpu_seconds:.1f} s of phases. A cell is "
            "the row tenant's DF while the column tenant was its only co-tenant ('all': every "
            "other tenant at once).",
            "",
        ]
        for clock in ["host", "device"] if m.device == "cuda" else ["host"]:
            out += [m.table(99, clock, "github"), ""]
        for fig in heatmaps.get(m.name, []):
            out += [f"![{fig.stem}]({fig.relative_to(root).as_posix()})", ""]
    return "\n".join(out) + "\n"


def _heatmap(m: MatrixResult, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return list(write_heatmap(m, directory / f"{slug(m.name)}.matrix"))


def _plots(result: ScenarioResult, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return list(write_plots(result, directory / slug(result.name)))


def render_markdown(
    results: Sequence[ScenarioResult],
    command: str | None,
    figures: dict[str, list[Path]] | None = None,
    root: Path | None = None,
) -> str:
    lines = ["# pytest-kts results", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    if results:
        m = results[0].machine
        lines += [
            f"- Date: {results[0].started_at}",
            f"- Device: {m.get('device')}"
            + (f", {m.get('gpu_name')} ({m.get('gpu_uuid')})" if m.get("gpu_name") else ""),
            f"- Driver: {m.get('driver', '-')}, CUDA {m.get('cuda', '-')}, torch {m.get('torch')}",
            f"- Host: {m.get('host')}, Python {m.get('python')}, {m.get('platform')}",
            "",
            "Latency in ms. *host* is the latency the caller lives with (intended start to "
            "observed completion); *device* is the CUDA event time of the work alone, which "
            "leaves out any wait for a time slice. DF = shared / solo at the percentile, with "
            "its confidence interval; the verdict is pass only when the whole interval lies "
            "below the threshold, fail only when it lies above.",
            "",
        ]
    for result in results:
        lines += _markdown_scenario(result, (figures or {}).get(result.name, []), root)
    return "\n".join(lines) + "\n"


def _markdown_scenario(result: ScenarioResult, figures: list[Path], root: Path | None) -> list[str]:
    out = [f"## {_md_text(result.name)}", ""]
    out.append(
        f"{len(result.tenants)} tenants on {result.device}; "
        f"{result.gpu_seconds:.1f} s of phases in {len(result.windows)} phases; "
        f"stopped: {result.stop_reason}."
    )
    out += ["", f"Sharing environment: {sharing_env.describe(result.sharing_env)}."]
    if started := describe_startup(result.backend.get("startup")):
        out += ["", started[0].upper() + started[1:] + "."]
    out.append("")
    specs = [
        [
            n,
            t.spec.workload,
            t.spec.size,
            t.spec.sleep_ms,
            t.spec.arrival,
            t.spec.rate_hz or "",
            t.accounting.get("samples", ""),
            t.accounting.get("malformed", 0),
            t.accounting.get("foreign", 0),
            t.accounting.get("misaddressed", 0),
        ]
        for n, t in result.tenants.items()
    ]
    out.append(
        tabulate(
            specs,
            headers=[
                "tenant",
                "workload",
                "size",
                "sleep ms",
                "arrival",
                "rate Hz",
                "samples",
                "malformed lines",
                "foreign lines",
                "misaddressed lines",
            ],
            tablefmt="github",
        )
    )
    label = f"{100 * result.confidence:.4g}%"
    out += [
        "",
        tabulate(_rows(result), headers=_headers(_check_p(result), label), tablefmt="github"),
        "",
    ]
    if note := _background_note(result):
        out += [note[0].upper() + note[1:] + ".", ""]
    if result.checks:
        out += ["Verdicts:", ""]
        for c in result.checks:
            estimate = "no estimate" if c.df is None else f"{c.df.value:.3f} {c.interval(3)}"
            look = "" if c.df is None else c.df.evidence.look_note()
            # What the test asserted leads, in bold; the gate's own word (pass and fail are
            # said of "DF < SLO") follows it, so that a test asserting DF > 1.3 that held does
            # not read "fail".
            said = _said(result.tenants.get(c.tenant), c.p, c.clock)
            if said:
                claims = "; ".join(a.text() for a in said) if len(said) > 1 else said[0].claim
                verdict = (
                    f"{claims}: **{_said_outcome(said)}** at look {c.looks} "
                    f"({c.rounds} rounds; as SLO DF < {c.threshold:g}: {c.verdict})"
                )
            else:
                verdict = (
                    f"SLO < {c.threshold:g}: **{c.verdict}** at look {c.looks} ({c.rounds} rounds)"
                )
            out.append(
                f"- {c.tenant}: DF p{c.p:g} ({c.clock}) = {estimate} ({label} CI) vs "
                f"{c.threshold:g}: {verdict}"
                + (f" ({c.reason})" if c.reason and c.verdict == "inconclusive" else "")
                + (f"; {c.power}" if c.power and c.verdict == "inconclusive" else "")
                + (f". {look[0].upper()}{look[1:]}" if look else "")
            )
            tenant = result.tenants.get(c.tenant)
            if tenant is not None and tenant.cotenants:
                out.append(f"  - who took the tail: {tenant.attribution(p=c.p).sentence()}")
        out.append("")
    if result.comparisons:
        name = result.comparisons[0].get("baseline", "")
        out += [f"Against baseline `{name}`:", ""]
        for comparison in result.comparisons:
            line = comparison_line(result, comparison)
            out.append(f"- {line.removeprefix(result.name + ' ')}")
        out.append("")
    if result.baseline_saved:
        out += [f"Saved as a baseline in `{result.baseline_saved}`.", ""]
    notes = _interval_notes(result)
    if notes:
        out += [*(f"{n.replace('*', chr(92) + '*', 1)}  " for n in notes), ""]
    # Both clocks side by side: the point of the tool on a modern GPU.
    both = []
    for name, tenant in result.tenants.items():
        for p in (50, 99):
            host, device = tenant.df(p, "host"), tenant.df(p, "device")
            if host is not None and device is not None:
                both.append([name, f"p{p}", _df_cell(host), _df_cell(device)])
    if both:
        out += [
            "DF by clock:",
            "",
            tabulate(
                both,
                headers=["tenant", "percentile", "host DF [CI]", "device DF [CI]"],
                tablefmt="github",
            ),
            "",
        ]
    if result.telemetry is not None:
        tele = result.telemetry.by_phase(result.windows)
        rows = [[phase, *_tele_cells(t)] for phase, t in tele.items()]
        out += [
            "GPU telemetry (NVML) per phase:",
            "",
            tabulate(
                rows,
                headers=["phase", "SM MHz median", "mem MHz", "util %", "power W", "samples"],
                tablefmt="github",
            ),
            "",
        ]
    out += _markdown_attribution(result)
    warnings = [*result.warnings, *line_warnings(result)]
    out += [f"> warning: {w}" for w in warnings]
    if warnings:
        out.append("")
    for fig in figures:
        rel = fig.relative_to(root) if root is not None else fig
        out += [f"![{fig.stem}]({rel.as_posix()})", ""]
    return out


def _tele_cells(t: PhaseTelemetry) -> list[str]:
    return [
        _num(t.sm_clock_median_mhz, 0),
        _num(t.mem_clock_mean_mhz, 0),
        _num(t.gpu_util_mean, 0),
        _num(t.power_mean_w, 0),
        str(t.samples),
    ]


def _markdown_attribution(result: ScenarioResult) -> list[str]:
    """Who took the tail: wait vs execution per tenant and phase, and the co-tenants to blame."""
    out: list[str] = []
    splits = []
    for name, tenant in result.tenants.items():
        split = tenant.wait_split()
        if split is None:
            continue
        for phase, part in (("solo", split.solo), ("shared", split.shared)):
            shared = phase == "shared"
            splits.append(
                [
                    name,
                    phase,
                    _num(part.wait_p50),
                    _num(part.wait_p99),
                    _num(part.exec_p50),
                    _num(part.exec_p99),
                    _num(split.df_wait, 2) if shared else "",
                    _num(split.df_exec, 2) if shared else "",
                    split.sentence() if shared else f"launch cost {split.launch_ms:.4f} ms",
                ]
            )
    if splits:
        out += [
            "Wait vs execution (ms; wait = host - device - launch cost, the launch cost being "
            "the solo median of host - device; the tail is the shared iterations above the solo "
            "host p99; DF per part is a point estimate at p99):",
            "",
            tabulate(
                splits,
                headers=[
                    "tenant",
                    "phase",
                    "wait p50",
                    "wait p99",
                    "exec p50",
                    "exec p99",
                    "DF wait",
                    "DF exec",
                    "tail",
                ],
                tablefmt="github",
            ),
            "",
        ]
    elif len(result.tenants) > 1:
        out += ["Wait vs execution: no device clock on this run, so no split.", ""]
    rows = []
    for name, tenant in result.tenants.items():
        if not tenant.cotenants:
            continue
        a = tenant.overlap()
        for b in a.blames:
            rows.append(
                [
                    name,
                    a.tail_n,
                    b.cotenant,
                    f"{100 * b.tail_overlap:.0f}%",
                    f"{100 * b.body_overlap:.0f}%",
                    _num(b.lift, 1),
                    f"{100 * b.tail_busy:.0f}% / {100 * b.body_busy:.0f}%",
                    f"{100 * b.share:.0f}%",
                    _num(b.excess_ms, 1),
                    _num(b.z, 1),
                    "**yes**" if b.blamed else "no",
                ]
            )
    if rows:
        out += [
            "Tail attribution (host intervals on the common clock): which co-tenants had work "
            "in flight during each tenant's shared iterations above its solo p99, against "
            "their overlap with ordinary iterations. The attributable share is "
            "(tail busy - body busy) / (1 - body busy); blamed needs z >= 2. See "
            "docs/attribution.md.",
            "",
            tabulate(
                rows,
                headers=[
                    "tenant",
                    "tail n",
                    "co-tenant",
                    "tail overlap",
                    "body overlap",
                    "lift",
                    "busy tail / body",
                    "attributable",
                    "excess ms",
                    "z",
                    "blamed",
                ],
                tablefmt="github",
            ),
            "",
        ]
    return out
