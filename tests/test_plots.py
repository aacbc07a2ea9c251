from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from dfs import make_df

from pytest_kts import plots
from pytest_kts.backends.base import TenantSpec
from pytest_kts.matrix import MatrixResult
from pytest_kts.protocol import Sample
from pytest_kts.results import CheckOutcome, PhaseWindow, ScenarioResult, TenantResult
from pytest_kts.samples import PhaseSamples, group
from pytest_kts.telemetry import METRICS, Telemetry

pytest.importorskip("matplotlib")
from matplotlib.image import imread

S = 1_000_000_000
T0 = 1_700_000_000 * S
N = 400  # per tenant, phase and round: enough for a p99 interval


def make_result(*, device_clock: bool = True, telemetry: bool = True) -> ScenarioResult:
    """Two tenants, two rounds of solo fft, solo gemm, shared; shared is slower on host."""
    rng = np.random.default_rng(7)
    base = {"fft": 1.0, "gemm": 4.0}
    records: list[Sample] = []
    windows: list[PhaseWindow] = []
    t = T0
    for rnd in range(2):
        plan = [("solo", ("fft",)), ("solo", ("gemm",)), ("shared", ("fft", "gemm"))]
        for phase, tenants in plan:
            start = t
            for name in tenants:
                slow = 1.6 if phase == "shared" else 1.0
                host = base[name] * slow * rng.lognormal(0, 0.2, N)
                device = base[name] * rng.lognormal(-0.1, 0.1, N)
                for i in range(N):
                    s = start + i * 20_000_000
                    records.append(
                        Sample(
                            name,
                            phase,
                            rnd,
                            i,
                            s,
                            s + int(host[i] * 1e6),
                            host[i],
                            device[i] if device_clock else float("nan"),
                        )
                    )
            t = start + N * 20_000_000 + S
            windows.append(PhaseWindow(phase, rnd, tenants, start, t - S))
    grouped = group(records)
    tenants = {
        name: TenantResult(spec=TenantSpec(name, name, 1024), samples=grouped[name])
        for name in grouped
    }
    tele = None
    if telemetry:
        times = np.arange(T0, t, S // 20, dtype=np.int64)
        columns = {name: np.full(times.size, np.nan) for name in METRICS}
        columns["sm_clock_mhz"] = np.where((times // S) % 2 == 0, 345.0, 1980.0)
        columns["gpu_util_pct"] = np.linspace(0, 100, times.size)
        tele = Telemetry(times, columns, np.zeros(times.size, dtype=np.int64))
    return ScenarioResult(
        name="tests/test_gpu.py::test_fft[4096]",
        device="cuda" if device_clock else "cpu",
        tenants=tenants,
        windows=windows,
        telemetry=tele,
        checks=[CheckOutcome("fft", 99.0, "host", 1.3, df=make_df((1.4, 1.8), value=1.6), looks=2)],
    )


def check_png(path: Path, min_width: int, min_height: int) -> np.ndarray:
    assert path.is_file() and path.suffix == ".png"
    assert path.stat().st_size > 10_000  # a figure with content, not an empty canvas
    image = imread(path)
    height, width = image.shape[:2]
    assert width >= min_width and height >= min_height
    return image


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The figures of the full result (two clocks, telemetry), drawn once for the module."""
    return plots.write_plots(make_result(), tmp_path_factory.mktemp("full") / "scenario")


@pytest.fixture(scope="module")
def cpu_figures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A CPU run without telemetry: host clock only, no telemetry panels."""
    result = make_result(device_clock=False, telemetry=False)
    return plots.write_plots(result, tmp_path_factory.mktemp("cpu"))


def test_writes_three_figures(figures: list[Path]) -> None:
    assert [p.name for p in figures][:3] == list(plots.FILES)
    # Plus one tail-attribution timeline per tenant whose tail grew (both are slowed 1.6x).
    assert [p.name for p in figures][3:] == [
        "tail_attribution_fft.png",
        "tail_attribution_gemm.png",
    ]
    cdf, timeline, df, attribution, _ = figures
    check_png(attribution, 900, 300)
    image = check_png(cdf, 1000, 700)  # 2 clocks side by side x 2 tenants
    assert image.shape[1] > image.shape[0]
    check_png(timeline, 1000, 500)
    check_png(df, 450, 400)


def test_cpu_run_draws_host_clock_only(figures: list[Path], cpu_figures: list[Path]) -> None:
    assert [p.name for p in cpu_figures][:3] == list(plots.FILES)
    # One column of CDFs instead of two.
    assert imread(cpu_figures[0]).shape[1] < imread(figures[0]).shape[1]


def test_telemetry_adds_panels_beneath_the_timeline(
    figures: list[Path], cpu_figures: list[Path]
) -> None:
    assert imread(figures[1]).shape[0] > imread(cpu_figures[1]).shape[0]


def test_a_steady_clock_is_a_legend_line_not_a_panel() -> None:
    # On a GPU held at its boost clock the SM-clock panel was a flat line at 1980 MHz: it
    # carried nothing. The timeline says the clock was steady instead; a moving clock (idle
    # 345 MHz between phases) keeps its panel.
    def texts(fig: object) -> list[str]:
        return [
            t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()
        ]  # type: ignore[attr-defined]

    moving = make_result()
    fig = plots._timeline_figure(moving)
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "host latency (ms)",
        "SM clock (MHz)",
        "utilization (%)",
    ]
    assert not any("steady" in t for t in texts(fig))

    steady = make_result()
    assert steady.telemetry is not None
    clock = steady.telemetry.columns["sm_clock_mhz"]
    clock[:] = 1980.0 + np.where(np.arange(clock.size) % 7 == 0, -15.0, 0.0)
    fig = plots._timeline_figure(steady)
    assert [ax.get_ylabel() for ax in fig.axes] == ["host latency (ms)", "utilization (%)"]
    assert "SM clock steady at 1980 MHz" in texts(fig)


def test_no_samples_no_figures(tmp_path: Path) -> None:
    result = make_result(telemetry=False)
    empty = group([], tenants=["fft", "gemm"])
    for name, tenant in result.tenants.items():
        tenant.samples = empty[name]
    result.windows = []
    assert plots.write_plots(result, tmp_path) == []


def test_missing_matplotlib_returns_empty_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    reason = plots.unavailable_reason()
    assert reason is not None and "matplotlib" in reason
    assert plots.write_plots(make_result(), tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_pyplot_state_untouched(figures: list[Path]) -> None:
    # Figures are drawn on their own Agg canvas: no pyplot figure is left open in the process.
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or not pyplot.get_fignums()


def test_unbounded_intervals_are_drawn_open_ended() -> None:
    pytest.importorskip("matplotlib")
    from dfs import make_df
    from matplotlib.figure import Figure

    from pytest_kts.plots import _df_axis, _df_points, _open_ends
    from pytest_kts.verdict import DegradationFactor

    def df(ci: tuple[float, float], reason: str | None) -> DegradationFactor:
        return make_df(ci, value=2.0, reason=reason)

    dfs = {
        ("a", "host"): df((1.5, 2.5), None),  # bounded: an ordinary error bar
        # The shared phase short of its floor: no upper bound (degradation() gives inf).
        ("b", "host"): df((1.5, math.inf), "no upper bound: too few shared samples"),
        ("c", "host"): df((0.0, math.inf), "too few samples"),  # no bound at all
    }
    ax = Figure().subplots()
    ends = _df_points(ax, ["a", "b", "c"], "host", 0.0, dfs)
    assert [(x, start, down, up) for x, start, down, up, _ in ends] == [
        (1.0, 2.0, False, True),  # from the point up; the bar draws the lower bound
        (2.0, 2.0, True, True),
    ]
    _df_axis(ax, dfs, [1.3])
    _open_ends(ax, ends)
    arrows = [a for a in ax.texts if getattr(a, "arrow_patch", None) is not None]
    assert len(arrows) == 3  # b up; c up and down
    bottom, top = ax.get_ylim()
    # A log axis around 1 and the threshold: 1 is inside, room above the point for the
    # arrows, and a missing lower end runs to the bottom edge (not to 0, which has no place).
    assert ax.get_yscale() == "log"
    assert 0 < bottom < 1.0 and top >= 2.8


def test_titles_wrap_at_test_id_boundaries() -> None:
    from pytest_kts.plots import _wrap

    title = "examples/test_study.py::test_study_protocol_reports_both_clocks: latency"
    lines = _wrap(title, 40)
    assert "".join(lines).replace(" ", "") == title.replace(" ", "")
    assert all(len(line) <= 40 for line in lines)
    assert lines[0] == "examples/test_study.py::test_study_"  # broken after "_", not mid-word
    assert _wrap("x" * 50, 20) == ["x" * 20, "x" * 20, "x" * 10]


def test_a_cdf_of_a_million_samples_draws_its_tails_whole_and_its_body_on_a_grid() -> None:
    from pytest_kts.plots import CDF_TAIL_POINTS, _cdf_points

    assert list(_cdf_points(10)) == list(range(10))  # few samples: every one
    n = 1_000_000
    keep = _cdf_points(n)
    assert keep.size < 5000 and np.all(np.diff(keep) > 0)
    assert keep[0] == 0 and keep[-1] == n - 1
    # Every one of the top ranks (p99.8 and above here): the tail a verdict is about.
    assert set(range(n - CDF_TAIL_POINTS, n)) <= set(keep.tolist())


def _phase(tenant: str, phase: str, scale: float, n: int, seed: int) -> PhaseSamples:
    rng = np.random.default_rng(seed)
    ms = scale * rng.lognormal(0, 0.2, n)
    records = [
        Sample(tenant, phase, i // 100, i % 100, T0 + i * S, T0 + i * S + 1, ms[i], math.nan)
        for i in range(n)
    ]
    return PhaseSamples.from_records(tenant, phase, records)


def test_heatmap_stars_the_cells_that_are_point_estimates_only(tmp_path: Path) -> None:
    # The router next to b has thousands of samples (an interval with both ends); next to c
    # only a few dozen, too few to bound a p99: that cell is a point estimate, and says so.
    solo = {"r": _phase("r", "solo", 1.0, 3000, 1)}
    shared = {
        ("r", ("b",)): _phase("r", "shared", 2.0, 3000, 2),
        ("r", ("c",)): _phase("r", "shared", 0.5, 40, 3),
    }
    matrix = MatrixResult("m", "cpu", ["r", "b", "c"], solo, shared, rows=["r"])
    with_b, with_c = matrix.df("r", "b"), matrix.df("r", "c")
    assert with_b is not None and with_c is not None
    assert with_b.bounded and not with_c.bounded
    # One bootstrap per cell, whoever reads it: the heatmap, the tables and summary.json.
    assert matrix.cells()[0][1:] == [with_b, with_c] and matrix.df("r", "b") is with_b
    assert plots.heatmap_label(with_b) == f"{with_b.value:.2f}"
    assert plots.heatmap_label(with_c) == f"{with_c.value:.2f}*"
    (png,) = plots.write_heatmap(matrix, tmp_path)
    assert png.name == "contention_matrix.png" and imread(png).shape[0] > 100


def test_the_threshold_is_written_beside_its_line() -> None:
    # A log axis labels 1, 2 and 5: an SLO of 1.3 or 3 would be a line without a number.
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    plots._thresholds(ax, make_result(telemetry=False), ["fft", "gemm"])
    assert [t.get_text() for t in ax.texts] == ["1.3"]


def test_two_clocks_labels_at_one_tenant_do_not_collide() -> None:
    # On an H100 the matmul's host and device p99 were 1.26 and 1.22, neither with an upper
    # end: "p99 1.26 (no upper bound yet)" ran over the device point's label. Now the left
    # clock labels to the left, the right one to the right, each with the table's interval.
    from dfs import make_df

    dfs = {
        ("fft", "host"): make_df((4.17, math.inf), value=4.72, reason="no upper bound"),
        ("fft", "device"): make_df((0.83, 1.07), value=0.94),
        ("gemm", "host"): make_df((1.23, math.inf), value=1.26, reason="no upper bound"),
        ("gemm", "device"): make_df((1.22, math.inf), value=1.22, reason="no upper bound"),
    }
    fig = plots._df_figure(make_result(telemetry=False), dfs)
    assert fig is not None
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_text()]  # the arrows have no text
    assert sorted(t.get_text() for t in labels) == [
        "1.3",
        "p99 0.94",
        "p99 1.22 (≥ 1.22)",
        "p99 1.26 (≥ 1.23)",
        "p99 4.72 (≥ 4.17)",
    ]  # fmt: skip  (1.3: fft's SLO, written on its line, inside fft's slot)
    boxes = [t.get_window_extent() for t in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b)
