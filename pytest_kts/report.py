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
from pytest_kts.plots import write_heatmap, write_plots
from pytest_kts.results import ScenarioResult, TenantResult
from pytest_kts.samples import to_csv
from pytest_kts.stats import Summary
from pytest_kts.verdict import DegradationFactor, interval_text

if TYPE_CHECKING:
    from pytest_kts.telemetry import PhaseTelemetry

PERCENTILES = (50, 95, 99, 99.9)
HEADERS = (
    "tenant",
    "phase",
    "clock",
    "n",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "p99.9 ms",
    "jitter",
    "it/s",
    "DF p99 [CI]",
    "verdict",
    "tail blamed on",
)


def slug(name: str) -> str:
    """A scenario's file and folder name in the report: its own, inside the report folder."""
    return safefile.safe_name(name, 120)


def _num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def _df_cell(df: DegradationFactor | None) -> str:
    """The DF with the interval its verdict used. Below the sample floor the verdict used no
    two-sided interval: only the bound that exists is shown, marked ``*`` (the note says why)."""
    if df is None or not math.isfinite(df.value):
        return "-"
    return f"{df.value:.2f} {df.interval()}" + ("" if df.reason is None else "*")


def _interval_notes(result: ScenarioResult) -> list[str]:
    notes = []
    for name, tenant in result.tenants.items():
        for clock in tenant.clocks():
            df = tenant.df(99, clock)
            if df is not None and df.reason is not None:
                notes.append(f"* {name} ({clock}): {df.reason}")
    return notes


def _check_for(result: ScenarioResult, tenant: str, clock: str) -> dict[str, Any] | None:
    for check in result.checks:
        if check["tenant"] == tenant and check["clock"] == clock:
            return check
    return None


def _rows(result: ScenarioResult) -> list[list[str]]:
    rows: list[list[str]] = []
    for name, tenant in result.tenants.items():
        for clock in ("host", "device"):
            if clock not in tenant.clocks():
                continue
            df = tenant.df(99, clock)
            check = _check_for(result, name, clock)
            for phase in ("solo", "shared"):
                s = tenant.summary(phase, clock)
                if s is None:
                    continue
                shared = phase == "shared"
                verdict = ""
                if shared and check is not None:
                    verdict = f"{check['verdict']} (< {check['threshold']:g})"
                rows.append(
                    [
                        name,
                        phase,
                        clock,
                        str(s.n),
                        _num(s.p50),
                        _num(s.p95),
                        _num(s.p99),
                        _num(s.p999),
                        _num(s.jitter, 2),
                        _num(s.throughput, 1),
                        _df_cell(df) if shared else "",
                        verdict,
                        _blame_cell(result, tenant) if shared and clock == "host" else "",
                    ]
                )
    return rows


def _blame_cell(result: ScenarioResult, tenant: TenantResult) -> str:
    if len(result.tenants) < 2:
        return ""
    return tenant.attribution().cell()


def _attribution_lines(result: ScenarioResult) -> list[str]:
    """One line per tenant: what its tail grew from (wait vs execution)."""
    lines = []
    for name, tenant in result.tenants.items():
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


def render_table(results: Sequence[ScenarioResult], *, fmt: str = "simple") -> str:
    blocks = []
    for result in results:
        head = (
            f"{result.name}  [{result.device}, {result.gpu_seconds:.1f} s of phases; "
            f"{result.stop_reason}]"
        )
        table = tabulate(_rows(result), headers=HEADERS, tablefmt=fmt)
        notes = list(_attribution_lines(result))
        notes += [f"  {n}" for n in _interval_notes(result)]
        if started := describe_startup(result.backend.get("startup")):
            notes.append(f"  {started}")
        notes += [f"  warning: {w}" for w in [*result.warnings, *line_warnings(result)]]
        blocks.append("\n".join([head, table, *notes]))
    return "\n\n".join(blocks)


# -- what the terminal summary says after the tables ---------------------------------------------


def check_line(result: ScenarioResult, c: dict[str, Any]) -> str:
    """One undecided SLO check: where, the estimate with its interval, and why undecided."""
    value = c.get("value")
    ci = c.get("ci") or [None, None]
    estimate = "no estimate" if value is None else f"{value:.2f} {interval_text(ci[0], ci[1])}"
    alpha = c.get("alpha")
    level = f", alpha {alpha:.3g}" if isinstance(alpha, float) and math.isfinite(alpha) else ""
    why = c.get("reason") or f"the interval contains the threshold {c['threshold']:g}"
    line = (
        f"{result.name} {c['tenant']}: DF p{c['p']:g} ({c['clock']}) {estimate} vs "
        f"{c['threshold']:g} after {c.get('looks', 0)} look(s){level}: {why}"
    )
    if c.get("power"):
        line += f"; {c['power']}"
    return line


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
    undecided = [(r, c) for r in results for c in r.checks if c["verdict"] == "inconclusive"]
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
        "checks": result.checks,
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
) -> list[Path]:
    """Write every artifact for ``results`` under ``directory``; return the paths written.

    Everything is written into a fresh folder inside ``directory`` first and moved into place
    only once all of it is written, replacing the previous report's entries
    (:data:`REPORT_ENTRIES`) as wholes: a write that fails raises and leaves the previous report
    as it was, never a mix of old and new files. Other files in ``directory`` are left alone.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".kts-report-", dir=directory))
    try:
        written = _write_files(results, staging, command, plots, matrices)
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
        "scenarios": [scenario_dict(r) for r in results],
        "matrices": [matrix_dict(m) for m in matrices],
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
    if matrices:
        markdown += "\n" + render_matrices_markdown(matrices, heatmaps, directory)
    safefile.write_text(directory / "results.md", markdown)
    written.append(directory / "results.md")
    return written


def matrix_dict(m: MatrixResult) -> dict[str, Any]:
    clocks = ["host", "device"] if m.device == "cuda" else ["host"]
    return {
        "name": m.name,
        "device": m.device,
        "started_at": m.started_at,
        "gpu_seconds": round(m.gpu_seconds, 3),
        "rows": m.tenants,
        "columns": m.columns(),
        "df_p99": {c: [[_json_num(v) for v in row] for row in m.values(99, c)] for c in clocks},
        "machine": m.machine,
    }


def render_matrices_markdown(
    matrices: Sequence[MatrixResult], heatmaps: dict[str, list[Path]], root: Path
) -> str:
    out = []
    for m in matrices:
        out += [f"## Contention matrix: {m.name}", ""]
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
    out = [f"## {result.name}", ""]
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
    out += ["", tabulate(_rows(result), headers=HEADERS, tablefmt="github"), ""]
    if result.checks:
        out += ["Verdicts:", ""]
        for c in result.checks:
            ci = c.get("ci") or [None, None]
            out.append(
                f"- {c['tenant']}: DF p{c['p']:g} ({c['clock']}) = {_num(c.get('value'), 3)} "
                f"{interval_text(ci[0], ci[1], 3)} vs {c['threshold']:g}: **{c['verdict']}** "
                f"after {c['looks']} look(s)"
                + (
                    f" ({c['reason']})"
                    if c.get("reason") and c["verdict"] == "inconclusive"
                    else ""
                )
                + (f"; {c['power']}" if c.get("power") and c["verdict"] == "inconclusive" else "")
            )
        out.append("")
    if result.comparisons:
        name = result.comparisons[0].get("baseline", "")
        out += [f"Against baseline `{name}`:", ""]
        for c in result.comparisons:
            out.append(f"- {comparison_line(result, c).removeprefix(result.name + ' ')}")
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
        a = tenant.attribution()
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
