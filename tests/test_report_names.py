"""Report files are the scenario's own (issue 19 item 4): names that clean alike never share a
file and no name leaves the report folder. A report is replaced whole or not at all (item 6),
and it names the lines a worker wrote in another tenant's name (item 1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pytest_kts import report, safefile
from pytest_kts.backends.base import TenantSpec
from pytest_kts.protocol import LineReader, Sample, format_sample
from pytest_kts.report import REPORT_ENTRIES, render_table, slug, write_report
from pytest_kts.results import ScenarioResult, TenantResult
from pytest_kts.samples import group


def scenario(name: str, n: int = 40, seed: int = 0) -> ScenarioResult:
    """Two tenants, ``a`` and ``b``, ``n`` samples a phase; ``seed`` makes the latencies."""
    rng = np.random.default_rng(seed)
    records = []
    t = 1_700_000_000_000_000_000
    for phase in ("solo", "shared"):
        for tenant in ("a", "b"):
            for i, ms in enumerate(rng.lognormal(0, 0.2, n)):
                start = t + i * 5_000_000
                records.append(Sample(tenant, phase, 0, i, start, start + int(ms * 1e6), ms, ms))
            t += n * 5_000_000
    grouped = group(records)
    tenants = {
        k: TenantResult(spec=TenantSpec(k, "fft", 64), samples=grouped[k]) for k in ("a", "b")
    }
    return ScenarioResult(name=name, device="cpu", tenants=tenants, started_at="2026-01-01")


def _inside(root: Path, path: Path) -> bool:
    return root.resolve() in path.resolve().parents


@pytest.mark.parametrize(
    "names",
    [
        ["tests/test_x.py::test_a[1]", "tests/test_x.py__test_a_1_", "tests_test_x.py::test_a[1]"],
        ["t::" + "x" * 200 + "-one", "t::" + "x" * 200 + "-two"],
        ["Scenario", "scenario"],  # alike on a case-insensitive file system
        ["x", "x.telemetry"],  # x's telemetry CSV is x.telemetry.csv
    ],
)
def test_names_that_clean_alike_get_files_of_their_own(names: list[str]) -> None:
    slugs = [slug(n) for n in names]
    assert len({s.lower() for s in slugs}) == len(names)
    assert all(len(s) <= 130 for s in slugs)


def test_plain_names_stay_readable() -> None:
    assert slug("ad-hoc") == "ad-hoc" and slug("fft_next_to_gemm") == "fft_next_to_gemm"


def test_each_scenarios_raw_samples_are_kept(tmp_path: Path) -> None:
    names = ["tests/t.py::test_a", "tests_t.py::test_a", "tests/t.py::" + "y" * 300]
    results = [scenario(n, seed=k) for k, n in enumerate(names)]
    write_report(results, tmp_path, plots=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    csvs = [tmp_path / s["samples_csv"] for s in summary["scenarios"]]
    assert len(set(csvs)) == 3 and all(p.is_file() for p in csvs)
    for result, path in zip(results, csvs, strict=True):
        first = path.read_text().splitlines()[1].split(",")
        assert float(first[6]) == pytest.approx(result.tenants["a"].samples.solo.host_ms[0], 1e-5)


@pytest.mark.parametrize("name", ["..", ".", "../../evil", "/etc/passwd", "a/../../b", "-", ""])
def test_no_name_leaves_the_report_folder(tmp_path: Path, name: str) -> None:
    root = tmp_path / "report"
    written = write_report([scenario(name)], root)
    assert written and all(_inside(root, p) for p in written)
    assert sorted(os.listdir(tmp_path)) == ["report"]
    assert not slug(name).startswith(".") and "/" not in slug(name)


def test_a_failed_write_leaves_the_previous_report_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_report([scenario("old", seed=1)], tmp_path, plots=False)
    (tmp_path / "notes.txt").write_text("the user's own file")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real = safefile.write_text

    def full_disk(path: object, text: str, encoding: str = "utf-8") -> None:
        if str(path).endswith("benchmark.json"):
            raise OSError(28, "No space left on device")
        real(path, text, encoding)  # type: ignore[arg-type]

    monkeypatch.setattr(report.safefile, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_report([scenario("new", seed=2)], tmp_path, plots=False)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing of "new", nothing staged left behind


def test_a_new_report_replaces_the_old_one_entirely(tmp_path: Path) -> None:
    write_report([scenario("first"), scenario("second")], tmp_path)
    (tmp_path / "notes.txt").write_text("kept")
    write_report([scenario("third")], tmp_path)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["third.csv"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["third"]
    assert sorted(os.listdir(tmp_path)) == sorted(
        [e for e in REPORT_ENTRIES if (tmp_path / e).exists()] + ["notes.txt"]
    )


def test_the_report_names_a_tenants_misaddressed_lines(tmp_path: Path) -> None:
    result = scenario("t.py::test_x")
    forger = result.tenants["b"]
    line = format_sample(Sample("a", "shared", 0, 0, 10, 20, 1.0, 1.0))
    reader = LineReader.bound("b", "shared", 0).feed_all([line] * 3)
    forger.accounting = reader.accounting()
    table = render_table([result])
    assert "warning: tenant 'b': 3 line(s) from its worker named another tenant" in table
    assert "('a' (3))" in table
    write_report([result], tmp_path, plots=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    scenario_json = summary["scenarios"][0]
    assert scenario_json["tenants"]["b"]["lines"]["misaddressed_to"] == {"a": 3}
    assert any("'b': 3 line(s)" in w for w in scenario_json["warnings"])
    markdown = (tmp_path / "results.md").read_text()
    assert "misaddressed lines" in markdown and "> warning: tenant 'b': 3 line(s)" in markdown


def test_a_folder_with_someone_elses_plots_is_not_emptied(tmp_path: Path) -> None:
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "mine.png").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="no pytest-kts report; choose an empty folder"):
        write_report([scenario("x")], tmp_path, plots=False)
    assert sorted(os.listdir(tmp_path)) == ["plots"]
    assert (tmp_path / "plots" / "mine.png").read_bytes() == b"not ours"


def test_a_test_id_with_html_in_it_is_text_in_results_md() -> None:
    from pytest_kts.report import _md_text

    assert _md_text("t.py::test[<img src=x onerror=alert(1)>&]") == (
        "t.py::test[&lt;img src=x onerror=alert(1)&gt;&amp;]"
    )
