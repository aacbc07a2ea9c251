"""The ``kts`` command: judge saved worker logs, or run a scenario without a test file.

``kts report LOGDIR [--solo PATH...] [--shared PATH...] [--out DIR] [--slo fft=1.3]``
    Reads files of protocol lines (``KTS_APP,v2`` and the original study's ``KTS_APP,v1``)
    and the plugin's own ``samples/*.csv``, prints the same table as the pytest plugin and
    optionally writes the report files. Lines that are not ours (foreign) or ours but broken
    (malformed) are counted and reported. A v1 line with no phase takes it from its file or
    folder name (solo / shared) or from --solo / --shared.

``kts run --tenant fft:size=4096,sleep_ms=100 --tenant matmul:size=4096,sleep_ms=150 ...``
    Runs solo and shared phases ad hoc and prints the table.

Exit codes: 0 ok, 1 a verdict failed, 2 usage or input error (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pytest_kts.cli.common import EXIT_FAILED, EXIT_HELP, EXIT_OK, EXIT_USAGE, Parser, UsageError
from pytest_kts.cli.report import add_report_parser, cmd_report
from pytest_kts.cli.run import add_run_parser, cmd_run, parse_tenant
from pytest_kts.errors import ConfigError, KtsError, NoDeviceError

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "cmd_report",
    "cmd_run",
    "main",
    "parse_tenant",
]


def build_parser() -> argparse.ArgumentParser:
    # Plain text throughout: --help is read in a terminal, not rendered as rst.
    parser = Parser(
        prog="kts", description="GPU co-location tail latency, outside pytest.", epilog=EXIT_HELP
    )
    sub = parser.add_subparsers(dest="command", metavar="{report,run}")
    add_report_parser(sub)
    add_run_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one line (or --help)
        return int(exc.code or 0)
    args.argv = argv
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from pytest_kts import signals

    restore = signals.install()  # SIGTERM cleans up like Ctrl-C
    try:
        if args.command == "report":
            return cmd_report(args, sys.stdout)
        return cmd_run(args, sys.stdout)
    except (UsageError, ConfigError, NoDeviceError) as exc:
        print(f"kts {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KtsError as exc:
        # A worker that crashed: its message carries the stderr tail, which is worth the lines.
        print(f"kts {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a file that cannot be read or written: the input's fault
        print(f"kts {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except signals.Terminated as exc:
        print(f"kts {args.command}: {exc}", file=sys.stderr)
        return 143  # 128 + SIGTERM, as a shell reports it
    except KeyboardInterrupt:
        print(f"kts {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        restore()
