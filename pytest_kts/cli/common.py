"""What both ``kts`` commands share: the exit codes, the one-line usage error, the SLO
options and how a result is printed."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from pytest_kts.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or unusable input: reported in one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line instead of argparse's usage dump (subparsers inherit this class).
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_slo(items: Sequence[str]) -> dict[str, float]:
    from pytest_kts.thresholds import check_threshold

    slo = {}
    for item in items:
        tenant, sep, value = item.partition("=")
        if not sep or not tenant:
            raise UsageError(f"--slo {item!r}: expected TENANT=THRESHOLD, e.g. fft=1.3")
        if tenant in slo:
            raise UsageError(f"--slo {item!r}: {tenant!r} has an SLO already (give one each)")
        try:
            slo[tenant] = check_threshold(_float(value), f"--slo {item!r}: threshold")
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    return slo


def _float(text: str) -> float | str:
    """The number ``text`` spells, or ``text`` itself for the checks to refuse."""
    try:
        return float(text)
    except ValueError:
        return text


def tenant_named(result: Any, name: str) -> str:
    """``name`` as the result spells it; case-insensitive, since v1 lines say FFT for fft."""
    if name in result.tenants:
        return name
    matches: list[str] = [t for t in result.tenants if t.lower() == name.lower()]
    if len(matches) != 1:
        raise UsageError(f"--slo names {name!r}; the logs hold {', '.join(result.tenants)}")
    return matches[0]


def finish(results: Any, args: argparse.Namespace, out: IO[str], command: str) -> int:
    from pytest_kts.report import render_table, write_report

    results = results if isinstance(results, list) else [results]
    print(render_table(results), file=out)
    checks = [c for r in results for c in r.checks]
    for check in checks:
        estimate = "no estimate" if check.df is None else f"{check.df.value:.2f}"
        print(
            f"{check.tenant}: DF p{check.p:g} ({check.clock}) {estimate} {check.interval()} "
            f"< {check.threshold:g} at {100 * results[0].confidence:.4g}% confidence: "
            f"{check.verdict}",
            file=out,
        )
    if args.out:
        try:
            written = write_report(results, Path(args.out), command=command)
        except OSError as exc:
            raise UsageError(
                f"{_out_option(args)} {args.out}: the report could not be written ({exc}); the "
                "previous report there is unchanged"
            ) from None
        print(f"report: {len(written)} file(s) written to {args.out}", file=out)
    if args.benchmark_json:
        from pytest_kts import safefile
        from pytest_kts.baseline import github_benchmark_json

        entries = github_benchmark_json(results)
        try:
            safefile.write_named_text(args.benchmark_json, json.dumps(entries, indent=2) + "\n")
        except OSError as exc:
            raise UsageError(
                f"--benchmark-json {args.benchmark_json}: not written ({exc})"
            ) from None
        print(f"github-action-benchmark JSON: {args.benchmark_json}", file=out)
    failed = any(c.verdict == "fail" for c in checks)
    return EXIT_FAILED if failed else EXIT_OK


def _out_option(args: argparse.Namespace) -> str:
    return "--report" if getattr(args, "command", None) == "run" else "--out"


def check_outputs(args: argparse.Namespace) -> None:
    """Before anything runs or is read: the report folder and the JSON file can be written."""
    from pytest_kts import safefile

    for option, path, folder in (
        (_out_option(args), getattr(args, "out", None), True),
        ("--benchmark-json", getattr(args, "benchmark_json", None), False),
    ):
        if not path:
            continue
        try:
            safefile.check_writable(path, folder=folder)
        except OSError as exc:
            raise UsageError(
                f"{option} {path}: cannot write there ({exc.strerror or exc})"
            ) from None


def setting(name: str) -> Any:
    """An argparse type that parses like the plugin's option ``name`` (the same bounds);
    anything else is a usage error (exit 2)."""
    from pytest_kts.config import OPTIONS_BY_NAME

    option = OPTIONS_BY_NAME[name]

    def parse(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc}, got {text!r}") from None

    parse.__name__ = name
    return parse


def confidence_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.5 <= value < 1:
        raise argparse.ArgumentTypeError(f"confidence must be in [0.5, 1), got {text}")
    return value


def percentile_arg(text: str) -> float:
    from pytest_kts.thresholds import check_percentile

    try:
        value = check_percentile(_float(text), "--p")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    # 99, not 99.0: the same DF and interval as the table, which asks for p=99.
    return int(value) if value.is_integer() else value


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--slo",
        action="append",
        default=[],
        metavar="TENANT=DF",
        help="fail (exit 1) when TENANT's DF is above DF with confidence",
    )
    parser.add_argument("--p", type=percentile_arg, default=99, help="percentile of the DF (99)")
    parser.add_argument(
        "--confidence", type=confidence_arg, default=0.95, help="of every interval (0.95)"
    )
    parser.add_argument("--name", help="scenario name in the table and report")
    parser.add_argument(
        "--benchmark-json",
        metavar="FILE",
        help="also write github-action-benchmark customSmallerIsBetter JSON",
    )


EXIT_HELP = "Exit codes: 0 ok, 1 a verdict failed, 2 a usage or input error."
