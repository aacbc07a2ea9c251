"""``kts report``: judge saved worker logs against --slo and print or write the report."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import IO, Any

from pytest_kts.cli.common import (
    EXIT_HELP,
    Parser,
    UsageError,
    add_common_options,
    check_outputs,
    finish,
    parse_slo,
    tenant_named,
)
from pytest_kts.cli.logs import (
    LOG_PATTERNS,
    MAX_GZ_BYTES,
    LogSet,
    accounting_lines,
    build_result,
    find_logs,
    log_warnings,
    read_logs,
)
from pytest_kts.results import CheckOutcome

REPORT_HELP = (
    "Read files of protocol lines (KTS_APP,v2, and the original study's KTS_APP,v1), print the "
    "same table as the pytest plugin, and optionally write the report files. Lines that are "
    "not ours (foreign) or ours but broken (malformed) are counted and reported."
)


def judge(result: Any, slo: dict[str, float], p: float, clock: str | None) -> None:
    """Fill ``result.checks`` for each SLO (tenant -> DF threshold), as the runner does."""
    for given, threshold in slo.items():
        tenant = tenant_named(result, given)
        t = result.tenants[tenant]
        used = clock or ("host" if "host" in t.clocks() else "device")
        df = t.df(p, used)
        if df is None:
            raise UsageError(f"tenant {tenant!r} has no {used} clock in both phases")
        result.checks.append(
            CheckOutcome(
                tenant=tenant, p=p, clock=used, threshold=threshold, df=df, looks=1, final=True
            )
        )


def _report_results(args: argparse.Namespace, files: list[Path]) -> tuple[list[Any], LogSet]:
    """One scenario from the logs, and one per samples CSV (each CSV is its own scenario)."""
    solo = [Path(p) for p in args.solo]
    shared = [Path(p) for p in args.shared]
    tables = [p for p in files if p.name.endswith((".csv", ".csv.gz"))]
    logs = read_logs(
        [p for p in files if p not in tables], solo=solo, shared=shared, max_bytes=args.max_bytes
    )
    results = []
    if logs.readers or not tables:
        known = logs.n_samples - sum(logs.unphased.values())
        if logs.readers and not known and logs.unphased:
            raise UsageError(
                f"no sample has a phase: {', '.join(map(str, logs.unphased))} hold v1 lines "
                "with the phase left empty; name the files or folders solo/shared, or pass "
                "--solo PATH... --shared PATH..."
            )
        first = Path((args.logs or args.solo or args.shared)[0]).resolve()
        name = args.name or (first.name if first.is_dir() else first.name.split(".")[0])
        result = build_result(name, logs, confidence=args.confidence)
        result.warnings += log_warnings(logs)
        results.append(result)
    all_logs = logs
    for path in tables:
        one = read_logs([path], max_bytes=args.max_bytes)
        all_logs.readers.update(one.readers)
        all_logs.columns.update(one.columns)
        all_logs.skipped += one.skipped
        if not one.readers:
            continue
        name = path.name.split(".")[0] if len(tables) > 1 or not args.name else args.name
        if any(r.name == name for r in results):
            name = str(path)  # two files of one name: each scenario keeps its own report files
        result = build_result(name, one, confidence=args.confidence)
        result.warnings += log_warnings(one)
        results.append(result)
    return results, all_logs


def cmd_report(args: argparse.Namespace, out: IO[str]) -> int:
    slo = parse_slo(args.slo)  # before reading anything
    check_outputs(args)
    named = [*args.logs, *args.solo, *args.shared]
    if not named:
        raise UsageError("name at least one LOGDIR, or --solo/--shared paths")
    files = find_logs([Path(p) for p in named], args.glob or LOG_PATTERNS)
    if not files:
        raise UsageError(f"no log files ({', '.join(args.glob or LOG_PATTERNS)}) in {named}")
    results, logs = _report_results(args, files)
    if not results:
        skipped = "; ".join(logs.skipped) or "no samples"
        raise UsageError(f"nothing to report: {skipped}")
    for result in results:
        judge(result, {t: v for t, v in slo.items() if _has_tenant(result, t)}, args.p, args.clock)
    missing = [t for t in slo if not any(_has_tenant(r, t) for r in results)]
    if missing:
        held = sorted({t for r in results for t in r.tenants})
        raise UsageError(f"--slo names {missing[0]!r}; the logs hold {', '.join(held)}")
    for line in accounting_lines(logs):
        print(line, file=out)
    return finish(results, args, out, "kts " + shlex.join(args.argv))


def _has_tenant(result: Any, name: str) -> bool:
    return name in result.tenants or any(t.lower() == name.lower() for t in result.tenants)


def _byte_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes, got {text!r}")
    return value


def add_report_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add ``kts report`` and its options to the subcommands of ``kts``."""
    report = sub.add_parser(
        "report",
        help="table and report from saved worker logs",
        description=REPORT_HELP,
        epilog=EXIT_HELP,
    )
    report.add_argument("logs", nargs="*", metavar="LOGDIR", help="folders or files of lines")
    report.add_argument(
        "--solo",
        nargs="+",
        default=[],
        metavar="PATH",
        help="files or folders whose phaseless v1 lines are the solo phase",
    )
    report.add_argument(
        "--shared",
        nargs="+",
        default=[],
        metavar="PATH",
        help="files or folders whose phaseless v1 lines are the shared phase",
    )
    report.add_argument(
        "--max-bytes",
        type=_byte_count,
        default=MAX_GZ_BYTES,
        metavar="N",
        help=f"stop reading a file past N (decompressed) bytes (default {MAX_GZ_BYTES})",
    )
    report.add_argument("--out", metavar="DIR", help="write summary.json, samples, plots here")
    report.add_argument(
        "--glob",
        action="append",
        metavar="PATTERN",
        help=f"which files in a folder are logs (default {' '.join(LOG_PATTERNS)})",
    )
    report.add_argument(
        "--clock",
        choices=("host", "device"),
        help="clock of --slo checks (default host where present, else device)",
    )
    add_common_options(report)
