"""Figures for the report: latency CDFs, a latency timeline with GPU telemetry, and DF with CIs.

One file on purpose: every figure draws the same ScenarioResult with the same canvas, title,
legend and log-axis helpers and the same data helpers (kept samples, clocks, DFs); splitting
per figure would spread one drawing style over several modules.

matplotlib is optional. It is used through ``Figure`` and the Agg canvas directly, never
``pyplot``, so writing plots changes no global backend or state in the user's process.
:func:`unavailable_reason` says why nothing is drawn when matplotlib is missing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_kts import safefile
from pytest_kts.attribution import Blame
from pytest_kts.causal import CausalAttribution
from pytest_kts.errors import KtsError
from pytest_kts.samples import CLOCKS, PhaseSamples
from pytest_kts.stats import trim_warmup

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from pytest_kts.matrix import MatrixResult
    from pytest_kts.results import ScenarioResult
    from pytest_kts.telemetry import Telemetry
    from pytest_kts.verdict import DegradationFactor

PHASE_COLORS = {"solo": "#1f77b4", "shared": "#d62728"}
# Phases in the timeline are greys, so that no tenant colour means a phase there.
PHASE_SHADES = {"solo": "#f2f2f2", "shared": "#d0d0d0"}
PHASE_HATCH = {"solo": "", "shared": "//"}
# Tenants: colours that are neither a phase's nor a clock's (no blue, red or orange).
TENANT_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
CLOCK_COLORS = {"host": "#1f77b4", "device": "#ff7f0e"}
CLOCK_MARKERS = {"host": "o", "device": "s"}
DPI = 100
# A latency range wider than this factor gets a log axis, so the tail is not squashed.
LOG_SPREAD = 10.0
FILES = ("latency_cdf.png", "latency_timeline.png", "degradation.png")


def unavailable_reason() -> str | None:
    """Why plots cannot be drawn here, or None when they can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install 'pytest-kts[plots]'): no plots written"
    return None


def write_plots(result: ScenarioResult, directory: Path) -> list[Path]:
    """Draw every figure for one scenario into ``directory``; return the PNG paths.

    Returns ``[]`` when matplotlib is missing (see :func:`unavailable_reason`). A figure that
    has nothing to show (no samples) is left out rather than drawn empty.
    """
    if unavailable_reason() is not None:
        return []
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dfs = _degradations(result)
    drawn = [
        (FILES[0], _cdf_figure(result)),
        (FILES[1], _timeline_figure(result)),
        (FILES[2], _df_figure(result, dfs)),
    ]
    drawn += [
        (f"tail_attribution_{name}.png", _attribution_figure(result, name))
        for name in result.tenants
    ]
    paths = []
    for name, figure in drawn:
        if figure is not None:
            paths.append(_save(figure, directory / name))
    return paths


def _save(figure: Figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with safefile.replacing(path) as tmp:  # never through a symlink at ``path``
        figure.savefig(tmp, dpi=DPI)
    return path


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _title(fig: Figure, text: str, fontsize: float = 11) -> None:
    """A figure title wrapped to the figure's width: a long test id is never clipped."""
    width_in = fig.get_figwidth()
    # About 0.55 em per character of the default sans-serif; 72 points per inch.
    chars = max(20, int(width_in * 72 / (0.55 * fontsize)) - 4)
    fig.suptitle("\n".join(_wrap(text, chars)), fontsize=fontsize)


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` characters, broken after a space, ``_``, ``/`` or ``::``
    (a test id has no spaces; breaking inside a word is the last resort)."""
    lines, line = [], ""
    for chunk in re.split(r"(?<=[ _/])|(?<=::)", text):
        if line and len(line) + len(chunk.rstrip()) > width:
            lines.append(line.rstrip())
            line = ""
        while len(chunk) > width:
            lines.append(chunk[:width])
            chunk = chunk[width:]
        line += chunk
    if line.strip():
        lines.append(line.rstrip())
    return lines


def _legend_outside(ax: Axes, **kwargs: object) -> None:
    """The legend to the right of the axes, where it covers no line."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)  # type: ignore[arg-type]


# -- data helpers -------------------------------------------------------------------------------


def _kept(phase: PhaseSamples, clock: str) -> np.ndarray:
    """The latencies the statistics use: finite, each round's warmup trimmed."""
    if not phase.has_clock(clock):
        return np.empty(0)
    kept, _, _ = trim_warmup(phase.latency(clock), phase.segments())
    return kept


def _clocks(result: ScenarioResult) -> list[str]:
    return [
        c
        for c in CLOCKS
        if any(
            t.samples.solo.has_clock(c) or t.samples.shared.has_clock(c)
            for t in result.tenants.values()
        )
    ]


def _check_p(result: ScenarioResult, tenant: str) -> float:
    for check in result.checks:
        if check.tenant == tenant:
            return float(check.p)
    return 99.0


def _degradations(result: ScenarioResult) -> dict[tuple[str, str], DegradationFactor]:
    """DF per (tenant, clock) at the tenant's checked percentile (p99 when unchecked)."""
    out = {}
    for name, tenant in result.tenants.items():
        for clock in CLOCKS:
            try:
                df = tenant.df(_check_p(result, name), clock)
            except (KtsError, ValueError):
                df = None  # too few samples for any ratio: nothing to draw
            if df is not None and math.isfinite(df.value):
                out[(name, clock)] = df
    return out


def _use_log(ax: Axes, values: Sequence[np.ndarray], axis: str) -> None:
    finite = [v[np.isfinite(v) & (v > 0)] for v in values]
    pooled = np.concatenate(finite) if finite else np.empty(0)
    if not (pooled.size and pooled.max() / pooled.min() >= LOG_SPREAD):
        return
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    _plain_log_labels(target, float(pooled.max() / pooled.min()))


def _plain_log_labels(target: Any, spread: float) -> None:
    """Plain "0.5", "2" rather than "5e-01" on a log axis: milliseconds or factors someone
    reads. Minor ticks are labelled only at 2x and 5x, and only when the axis spans under two
    decades; more labels than that collide."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if spread >= 100:
        target.set_minor_formatter(NullFormatter())
        return

    def minor(v: float, _: object) -> str:
        if v <= 0:
            return ""
        mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
        return f"{v:g}" if any(abs(mantissa - m) < 1e-6 for m in (2, 5)) else ""

    target.set_minor_formatter(FuncFormatter(minor))


# -- CDF ------------------------------------------------------------------------------------------


def _cdf_figure(result: ScenarioResult) -> Figure | None:
    clocks = _clocks(result)
    tenants = list(result.tenants)
    if not clocks or not tenants:
        return None
    fig = _new_figure(5.5 * len(clocks), 3.6 * len(tenants))
    axes = fig.subplots(len(tenants), len(clocks), squeeze=False)
    for row, name in enumerate(tenants):
        for col, clock in enumerate(clocks):
            _cdf_axes(axes[row][col], result, name, clock)
    _title(fig, f"{result.name}: latency distribution, solo vs shared (warmup trimmed)")
    return fig


def _cdf_axes(ax: Axes, result: ScenarioResult, tenant: str, clock: str) -> None:
    from matplotlib.ticker import NullLocator

    samples = result.tenants[tenant].samples
    ax.set_title(f"{tenant}: {clock} clock", fontsize=10)
    series = {phase: np.sort(_kept(samples.phase(phase), clock)) for phase in ("solo", "shared")}
    if not any(v.size for v in series.values()):
        why = "no device clock (CPU run)" if clock == "device" else f"no {clock} latencies"
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    p = _check_p(result, tenant)
    for phase, values in series.items():
        if not values.size:
            continue
        # Plotting positions (i + 0.5) / n never reach 0 or 1, so the logit axis takes them.
        y = (np.arange(values.size) + 0.5) / values.size
        q = float(values[min(values.size - 1, math.ceil(p / 100 * values.size) - 1)])
        keep = _cdf_points(values.size)
        ax.step(
            values[keep],
            y[keep],
            where="post",
            color=PHASE_COLORS[phase],
            lw=1.4,
            label=f"{phase} (n={values.size}, p{p:g} {q:.3g} ms)",
        )
        ax.axvline(q, color=PHASE_COLORS[phase], ls="--", lw=0.8)
    # A logit axis spreads p90, p99, p99.9 apart: the tail is what the verdict is about.
    ax.set_yscale("logit")
    ax.set_ylim(0.005, 1 - 0.5 / max(v.size for v in series.values()))
    ticks = [t for t in (0.01, 0.1, 0.5, 0.9, 0.99, 0.999) if t < ax.get_ylim()[1]]
    ax.set_yticks(ticks, labels=[f"p{t * 100:g}" for t in ticks])
    # Logit minor ticks number in the hundreds and cost seconds of layout for nothing seen.
    ax.yaxis.set_minor_locator(NullLocator())
    _use_log(ax, list(series.values()), "x")
    ax.set_xlabel(f"{clock} latency (ms)")
    ax.set_ylabel("cumulative fraction")
    ax.grid(True, which="major", alpha=0.3)
    # Below the axes: the dashed percentile lines run the full height of the plot.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, frameon=False)


# Points of a CDF drawn: every one of the top and bottom ranks (the tails a logit axis spreads
# apart), an even grid of ranks between. A step drawn through 10^6 points cost 200 MB of
# rendering for a line that looks the same.
CDF_TAIL_POINTS = 2000
CDF_BODY_POINTS = 2000


def _cdf_points(n: int) -> np.ndarray:
    """Indices of a sorted sample of ``n`` to draw its CDF with (all of them when few)."""
    if n <= 2 * CDF_TAIL_POINTS + CDF_BODY_POINTS:
        return np.arange(n)
    body = np.linspace(0, n - 1, CDF_BODY_POINTS).astype(np.int64)
    tails = np.r_[np.arange(CDF_TAIL_POINTS // 4), np.arange(n - CDF_TAIL_POINTS, n)]
    return np.unique(np.r_[body, tails])


# -- timeline -----------------------------------------------------------------------------------


def _timeline_clock(result: ScenarioResult) -> str | None:
    clocks = _clocks(result)
    return clocks[0] if clocks else None  # host first: the latency an SLO is about


def _origin_ns(result: ScenarioResult) -> int | None:
    starts = [w.started_ns for w in result.windows]
    for t in result.tenants.values():
        for phase in (t.samples.solo, t.samples.shared):
            if len(phase):
                starts.append(int(phase.start_ns.min()))
    return min(starts) if starts else None


def _timeline_figure(result: ScenarioResult) -> Figure | None:
    clock = _timeline_clock(result)
    t0 = _origin_ns(result)
    if clock is None or t0 is None:
        return None
    telemetry = result.telemetry
    panels = ["latency"]
    steady = None
    if telemetry is not None and len(telemetry):
        steady = _steady_clock(telemetry)
        panels += [
            p
            for p, col in (("clock", "sm_clock_mhz"), ("util", "gpu_util_pct"))
            if telemetry.has(col) and not (p == "clock" and steady is not None)
        ]
    ratios = [3.0] + [1.2] * (len(panels) - 1)
    fig = _new_figure(11, 3.2 + 1.5 * (len(panels) - 1))
    axes = fig.subplots(
        len(panels), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": ratios}
    )[:, 0]
    for k, ax in enumerate(axes):
        _shade_windows(ax, result, t0, legend=k == 0)
    _latency_panel(axes[0], result, clock, t0)
    for ax, panel in zip(axes[1:], panels[1:], strict=True):
        _telemetry_panel(ax, result, panel, t0)
    if steady is not None:
        # A flat clock is a finding (no idle or throttled phase distorts a baseline), not a
        # panel: it is said in the lowest panel's legend.
        axes[-1].plot([], [], " ", label=f"SM clock steady at {steady:.0f} MHz")
        _legend_outside(axes[-1], fontsize=8, markerscale=3)
    axes[-1].set_xlabel("time since the first phase started (s)")
    _title(fig, f"{result.name}: {clock} latency per iteration over time")
    return fig


def _steady_clock(telemetry: Telemetry) -> float | None:
    """The SM clock's median when it never left it by more than 2% (or 15 MHz), else None.

    A panel that draws such a clock is a flat line; None also when the clock was not read.
    """
    if not telemetry.has("sm_clock_mhz"):
        return None
    clock = telemetry.column("sm_clock_mhz")
    clock = clock[np.isfinite(clock)]  # some finite: has() says so
    median = float(np.median(clock))
    spread = float(np.max(np.abs(clock - median)))
    return median if spread <= max(0.02 * median, 15.0) else None


def _shade_windows(ax: Axes, result: ScenarioResult, t0: int, *, legend: bool) -> None:
    seen = set()
    for w in result.windows:
        label = f"{w.phase} phase" if legend and w.phase not in seen else None
        seen.add(w.phase)
        ax.axvspan(
            (w.started_ns - t0) / 1e9,
            (w.ended_ns - t0) / 1e9,
            facecolor=PHASE_SHADES.get(w.phase, "#eeeeee"),
            edgecolor="#bbbbbb",
            hatch=PHASE_HATCH.get(w.phase, ""),
            lw=0,
            label=label,
            zorder=0,
        )


def _latency_panel(ax: Axes, result: ScenarioResult, clock: str, t0: int) -> None:
    markers = {"solo": "o", "shared": "^"}
    all_values = []
    for k, (name, tenant) in enumerate(result.tenants.items()):
        color = TENANT_COLORS[k % len(TENANT_COLORS)]
        for phase in ("solo", "shared"):
            data = tenant.samples.phase(phase)
            if not data.has_clock(clock):
                continue
            values = data.latency(clock)
            all_values.append(values)
            ax.scatter(
                (data.start_ns - t0) / 1e9,
                values,
                s=4,
                color=color,
                marker=markers[phase],
                alpha=0.6,
                lw=0,
                label=f"{name} {phase}",
            )
    _use_log(ax, all_values, "y")
    ax.set_ylabel(f"{clock} latency (ms)")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax, fontsize=8, markerscale=3)


def _telemetry_panel(ax: Axes, result: ScenarioResult, panel: str, t0: int) -> None:
    telemetry = result.telemetry
    assert telemetry is not None
    x = (telemetry.time_ns - t0) / 1e9
    if panel == "clock":
        clock = telemetry.column("sm_clock_mhz")
        ax.plot(x, clock, color="k", lw=1.0, label="SM clock")
        ax.set_ylabel("SM clock (MHz)")
        # From zero, so that 345 vs 1980 MHz looks like what it is and a flat line stays flat.
        ax.set_ylim(0, float(np.nanmax(clock)) * 1.1)
    else:
        ax.plot(
            x,
            telemetry.column("gpu_util_pct"),
            color="#2ca02c",
            lw=1.0,
            label="GPU utilization (NVML)",
        )
        if telemetry.has("gpm_sm_util_pct"):
            gpm = telemetry.column("gpm_sm_util_pct")
            ok = np.isfinite(gpm)
            ax.plot(x[ok], gpm[ok], color="#9467bd", lw=1.0, label="SM active (GPM)")
        ax.set_ylabel("utilization (%)")
        ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    _legend_outside(ax, fontsize=8)


# -- degradation factor ---------------------------------------------------------------------------


def _df_figure(
    result: ScenarioResult, dfs: dict[tuple[str, str], DegradationFactor]
) -> Figure | None:
    # Background tenants (no SLO, a short solo profile only) carry no verdict: left out.
    background = set(result.background)
    tenants = [t for t in result.tenants if t not in background]
    dfs = {key: df for key, df in dfs.items() if key[0] in tenants}
    if not dfs:
        return None
    clocks = [c for c in CLOCKS if any(key[1] == c for key in dfs)]
    fig = _new_figure(max(8.0, 1.8 * len(tenants) + 6.0), 4.4)
    ax = fig.subplots()
    ax.axhline(1.0, color="0.5", lw=0.8, label="no degradation (DF 1)")
    offsets = {c: (k - (len(clocks) - 1) / 2) * 0.25 for k, c in enumerate(clocks)}
    open_ended = []
    for k, clock in enumerate(clocks):
        # The left clock's labels to the left of its points, the right one's to the right: two
        # clocks' labels at one tenant no longer run into each other.
        side = "left" if len(clocks) > 1 and k == 0 else "right"
        open_ended += _df_points(ax, tenants, clock, offsets[clock], dfs, side=side)
    _thresholds(ax, result, tenants)
    _df_axis(ax, dfs, [float(c.threshold) for c in result.checks])
    _open_ends(ax, open_ended)
    ax.set_xticks(range(len(tenants)), labels=tenants)
    ax.set_xlim(-0.6, len(tenants) - 0.4)
    ax.set_ylabel("DF = shared / solo percentile")
    _title(fig, f"{result.name}: degradation factor with {result.confidence:.0%} CI")
    ax.grid(True, axis="y", alpha=0.3)
    _legend_outside(ax, fontsize=8)
    return fig


def _df_axis(
    ax: Axes, dfs: dict[tuple[str, str], DegradationFactor], thresholds: list[float]
) -> None:
    """A log axis around 1 and the thresholds: DF 0.8 and 1.25 are as far from 1, and the
    1-1.3 region a gate decides is not squashed by a DF of 10 beside it."""
    values = [1.0, *thresholds]
    for df in dfs.values():
        lo, hi = df.ci
        values += [v for v in (df.value, lo, hi) if math.isfinite(v) and v > 0]
    low, high = min(values) / 1.25, max(values) * 1.25
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    _plain_log_labels(ax.yaxis, high / low)


def _df_points(
    ax: Axes,
    tenants: list[str],
    clock: str,
    offset: float,
    dfs: dict[tuple[str, str], DegradationFactor],
    side: str = "right",
) -> list[tuple[float, float, bool, bool, str]]:
    """Points with the interval each verdict used; returns the open-ended ones to draw.

    As in the table: a phase short of its sample floor removes one end of the interval (an
    upper end of infinity, a lower end of 0); such ends are drawn as dotted arrows to the
    edge of the plot, and the label gives the end that exists as the table does ("(≥ 1.23)").
    ``side`` is where the labels go.
    """
    xs, ys, lo, hi, labels = [], [], [], [], []
    color = CLOCK_COLORS.get(clock, "k")
    open_ended = []
    for k, name in enumerate(tenants):
        df = dfs.get((name, clock))
        if df is None:
            continue
        low, high = df.ci
        has_low = math.isfinite(low) and low > 0
        has_high = math.isfinite(high)
        xs.append(k + offset)
        ys.append(df.value)
        lo.append(max(0.0, df.value - low) if has_low else 0.0)
        hi.append(max(0.0, high - df.value) if has_high else 0.0)
        labels.append(f"p{df.p:g} {df.value:.2f}" + ("" if df.bounded else " " + df.interval()))
        if not (has_low and has_high):
            # From the point: the error bar already draws the end that exists.
            open_ended.append((k + offset, df.value, not has_low, not has_high, color))
    if not xs:
        return open_ended
    ax.errorbar(
        xs,
        ys,
        yerr=[lo, hi],
        fmt=CLOCK_MARKERS[clock],
        color=color,
        capsize=5,
        ms=6,
        label=f"{clock} clock",
    )
    dx, ha = (-6, "right") if side == "left" else (6, "left")
    for x, y, text in zip(xs, ys, labels, strict=True):
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, 4), ha=ha, fontsize=8)
    return open_ended


def _open_ends(ax: Axes, ends: list[tuple[float, float, bool, bool, str]]) -> None:
    """Dotted arrows from a bound that exists to the edge of the plot, for one that does not."""
    if not ends:
        return
    bottom, top = ax.get_ylim()
    # Room above the highest open-ended point, so its arrow and label show (the axis is log:
    # a missing lower end runs to the bottom edge, not to 0).
    rising = [start for _, start, _, up, _ in ends if up]
    if rising:
        top = max(top, max(rising) * 1.4)
    for x, start, down, up, color in ends:
        style = {"arrowstyle": "-|>", "linestyle": ":", "color": color, "lw": 1.2}
        if up:
            ax.annotate("", xy=(x, top), xytext=(x, start), arrowprops=style)
        if down:
            ax.annotate("", xy=(x, bottom), xytext=(x, start), arrowprops=style)
    ax.set_ylim(bottom, top)


def _thresholds(ax: Axes, result: ScenarioResult, tenants: list[str]) -> None:
    colors = {"pass": "#2ca02c", "fail": "#d62728"}
    for check in result.checks:
        if check.tenant not in tenants:
            continue
        k = tenants.index(check.tenant)
        verdict = check.verdict
        ax.hlines(
            float(check.threshold),
            k - 0.45,
            k + 0.45,
            colors=colors.get(verdict, "0.3"),
            linestyles="--",
            lw=1.5,
            label=f"SLO {check.tenant} p{check.p:g} < {check.threshold:g} ({check.clock}): "
            f"{verdict}",
        )
        # The threshold's value on its line: a log axis labels 1, 2 and 5, not a 1.3 or 3.
        # Above the line's right end, inside the tenant's slot: beside it, it ran into the
        # next tenant's labels.
        ax.annotate(
            f"{check.threshold:g}", (k + 0.45, float(check.threshold)), xytext=(0, 2),
            textcoords="offset points", ha="right", va="bottom", fontsize=8,
            color=colors.get(verdict, "0.3"),
        )  # fmt: skip


# A cell whose DF has no interval with both ends is a point estimate, not a finding: a pair
# measured within what was left of a budget often has too few samples for a p99 bound.
UNBOUNDED_NOTE = "* point estimate only: too few samples for an interval with both ends"


def heatmap_label(df: DegradationFactor) -> str:
    """A heatmap cell's text: the DF, starred when its interval lacks an end."""
    return f"{df.value:.2f}" + ("" if df.bounded else "*")


def write_heatmap(matrix: MatrixResult, directory: Path) -> list[Path]:
    """The contention matrix as heatmaps of DF p99, one per clock; returns the PNG paths."""
    if unavailable_reason() is not None:
        return []
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clocks = [c for c in CLOCKS if any(s.has_clock(c) for s in matrix.solo.values())]
    figure = _new_figure(4.2 * len(clocks) + 1.0, 0.6 * len(matrix.rows) + 2.2)
    columns = matrix.columns()
    cells = {c: matrix.cells(99, c) for c in clocks}
    values = {c: np.array(matrix.values(99, c), dtype=float) for c in clocks}
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()] or [np.array([1.0])])
    # Centre the colour scale on DF 1 (no change): blue below, red above, equally far, and at
    # least 0.5-2, so a matrix of small DFs (1.2 at most) is not painted as alarming as a 5.
    spread = max(
        float(np.max(np.abs(np.log(finite[finite > 0])))) if finite.size else 0.0, math.log(2)
    )
    from matplotlib.colors import LogNorm

    norm = LogNorm(vmin=math.exp(-spread), vmax=math.exp(spread))
    axes = figure.subplots(1, len(clocks), squeeze=False)[0]
    image = None
    for ax, clock in zip(axes, clocks, strict=True):
        data = values[clock]
        image = ax.imshow(np.ma.masked_invalid(data), cmap="RdBu_r", norm=norm)
        ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
        ax.set_yticks(range(len(matrix.rows)), matrix.rows)
        ax.set_xlabel("co-tenant")
        ax.set_ylabel("tenant")
        ax.set_title(f"DF p99 ({clock} clock)")
        for (i, j), v in np.ndenumerate(data):
            df = cells[clock][i][j]
            if df is not None and math.isfinite(v):
                dark = v > 0 and abs(math.log(v)) > 0.6 * spread  # light text on dark cells
                ax.text(j, i, heatmap_label(df), ha="center", va="center", fontsize=9,
                        color="white" if dark else "black")  # fmt: skip
    if image is not None:
        bar = figure.colorbar(image, ax=list(axes), label="DF = shared p99 / solo p99")
        _plain_log_labels(bar.ax.yaxis, math.exp(2 * spread))
    if any(d is not None and not d.bounded for c in clocks for row in cells[c] for d in row):
        figure.text(
            0.01, 0.01, UNBOUNDED_NOTE, fontsize=8, ha="left", va="bottom", color="0.3"
        )  # fmt: skip
    _title(figure, f"Contention matrix: {matrix.name}", fontsize=10)
    return [_save(figure, directory / "contention_matrix.png")]


# -- tail attribution ------------------------------------------------------------------------------

# Most tenant iterations shown in the attribution timeline: a readable stretch, not the phase.
ATTRIBUTION_WINDOW_ITERATIONS = 60


def _attribution_window(
    data: PhaseSamples, tail: np.ndarray, excess: np.ndarray
) -> tuple[int, int]:
    """A stretch of the shared phase around its worst tail iteration (ns, epoch)."""
    worst = int(np.flatnonzero(tail)[np.argmax(excess[tail])])
    half = ATTRIBUTION_WINDOW_ITERATIONS // 2
    lo = max(0, worst - half)
    hi = min(len(data) - 1, worst + half)
    return int(data.start_ns[lo]), int(data.end_ns[hi])


def _bars(phase: PhaseSamples, mask: np.ndarray, x0: int) -> list[tuple[float, float]]:
    start = (phase.start_ns[mask] - x0) / 1e9
    width = (phase.end_ns[mask] - phase.start_ns[mask]) / 1e9
    return list(zip(start.tolist(), width.tolist(), strict=True))


def _attribution_figure(result: ScenarioResult, tenant: str) -> Figure | None:
    """The tenant's slow shared iterations over time, each co-tenant's busy intervals under it."""
    t = result.tenants[tenant]
    if len(result.tenants) < 2 or not len(t.samples.shared) or not len(t.samples.solo):
        return None
    a = t.overlap()
    if not a.grew:
        return None
    answer = t.attribution()
    causal = answer if isinstance(answer, CausalAttribution) else None
    data = t.samples.shared
    finite = np.isfinite(data.host_ms)
    tail = finite & (data.host_ms > a.threshold_ms)
    lo, hi = _attribution_window(data, tail, np.where(finite, data.host_ms, -np.inf))
    inside = (data.end_ns >= lo) & (data.start_ns <= hi)
    rows = [b.cotenant for b in a.blames]
    fig = _new_figure(11, 3.0 + 0.45 * (len(rows) + 1))
    top, bottom = fig.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 0.5 + 0.45 * (len(rows) + 1)]}
    )
    x0 = lo

    def sec(ns: np.ndarray) -> np.ndarray:
        return (np.asarray(ns, dtype=np.float64) - x0) / 1e9

    body = inside & finite & ~tail
    slow = inside & tail
    top.scatter(sec(data.start_ns[body]), data.host_ms[body], s=10, color="0.55", label="ordinary")
    top.scatter(sec(data.start_ns[slow]), data.host_ms[slow], s=16, color="#d62728", label="tail")
    top.axhline(a.threshold_ms, color="k", lw=0.8, ls="--", label=f"solo p{a.p:g}")
    top.set_ylabel(f"{tenant} host (ms)")
    top.grid(True, alpha=0.3)
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in (top, bottom):
        for s0, s1 in zip(data.start_ns[slow], data.end_ns[slow], strict=True):
            ax.axvspan(sec(s0), sec(s1), color="#fcbba1", alpha=0.5, lw=0)
    labels = [tenant]
    bottom.broken_barh(
        _bars(data, inside, x0),
        (0.6, 0.8),
        facecolors=["#d62728" if k else "0.55" for k in tail[inside]],
    )
    for k, name in enumerate(rows, start=1):
        other = result.tenants[name].samples.shared
        near = (other.end_ns >= lo) & (other.start_ns <= hi)
        bottom.broken_barh(
            _bars(other, near, x0),
            (k + 0.6, 0.8),
            facecolors=f"C{k % 10}",
        )
        labels.append(f"{name}\n{_cotenant_label(a[name], causal, name)}")
    bottom.set_yticks([k + 1.0 for k in range(len(labels))], labels, fontsize=8)
    bottom.set_ylim(0.4, len(labels) + 0.6)
    bottom.invert_yaxis()
    bottom.set_xlabel("time (s) in the shared phase, around the slowest iteration")
    if causal is not None:
        top_c = causal.top()
        blamed = (
            f"taken by {top_c.cotenant} (leave-one-out)" if top_c else "no decided cause by removal"
        )
    else:
        top_b = a.top()
        blamed = f"blamed on {top_b.cotenant} (overlap)" if top_b else "no co-tenant stands out"
    _title(
        fig,
        f"{result.name}: {tenant}'s tail ({a.tail_n} iterations above the solo p{a.p:g}), {blamed}",
    )
    return fig


def _cotenant_label(b: Blame, causal: CausalAttribution | None, name: str) -> str:
    """A co-tenant's row label: its causal share when it was left out, else what overlap can
    say (never a NaN: a co-tenant overlap cannot judge is said to be so)."""
    if causal is not None:
        effect = next((e for e in causal.effects if e.cotenant == name), None)
        if effect is not None:
            lo, hi = effect.share_ci
            if effect.decided:
                return f"caused {100 * effect.share:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"
            return "no decided effect"
    if not b.identifiable:
        return "not identifiable\nby overlap"
    lift = "inf" if math.isinf(b.lift) else f"{b.lift:.1f}x"
    return f"{100 * b.share:.0f}%, lift {lift}"
