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
import dataclasses
import fnmatch
import gzip
import io
import json
import math
import re
import shlex
import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, NoReturn

import numpy as np

from pytest_kts import protocol
from pytest_kts.backends.base import TenantSpec
from pytest_kts.config import DEVICES
from pytest_kts.constants import ARRIVALS
from pytest_kts.errors import ConfigError, KtsError, NoDeviceError
from pytest_kts.protocol import LineReader, check_tenant_name
from pytest_kts.samples import PHASE_CODES, SampleColumns, group_columns

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
LOG_PATTERNS = ("*.log", "*.log.gz", "*.txt", "*.out", "*.csv", "*.csv.gz")
V1_NOTE = (
    "v1 lines (the original study's format): host latency is epoch_ns_end - epoch_ns_start "
    "(time.time_ns() before the start event and after torch.cuda.synchronize(), so launch to "
    "observed completion, at the wall clock's resolution); device latency is the study's CUDA "
    "event time, which leaves out the wait for a time slice and times the host's launch gap "
    "on an idle GPU."
)
# A .gz may expand a thousandfold: stop reading one after this many decompressed bytes.
MAX_GZ_BYTES = 1 << 30
# Words in a file or folder name that say which phase a log holds (nearest name wins).
PHASE_WORDS = {
    "solo": "solo",
    "alone": "solo",
    "isolated": "solo",
    "baseline": "solo",
    "shared": "shared",
    "colocated": "shared",
    "concurrent": "shared",
    "together": "shared",
}


class UsageError(Exception):
    """Bad arguments or unusable input: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line instead of argparse's usage dump (subparsers inherit this class).
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- kts report: reading logs ---------------------------------------------------------------------


def _is_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\0" in f.read(4096)


def find_logs(paths: Sequence[Path], patterns: Sequence[str] = LOG_PATTERNS) -> list[Path]:
    """Files to read: files named on the command line, and log files inside named folders."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)
            )
        else:
            raise UsageError(f"{path} does not exist")
    return found


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.GzipFile(path, "rb")
    return open(path, "rb")


def _read_bounded(path: Path, reader: LineReader, *, max_bytes: int | None = None) -> Iterator[str]:
    """Lines of ``path`` as text, streamed; a line over ``MAX_LINE_BYTES`` is skipped whole.

    Memory stays bounded by one chunk plus one line whatever the file holds: an overlong line
    is read past in chunks and accounted to ``reader`` as malformed, never assembled.
    ``max_bytes`` caps what is read (decompressed, for a .gz); past it, reading stops with
    :class:`UsageError`.
    """
    chunk_size = 1 << 20
    total = 0
    with _open_binary(path) as f:
        pending = b""
        skipping: bytes | None = None  # the head of an overlong line being read past
        while True:
            chunk = f.read(chunk_size)
            if not chunk:
                break
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                raise UsageError(
                    f"{path} expands past {max_bytes} bytes: not read (a .gz bomb? raise "
                    "--max-bytes if it is real)"
                )
            start = 0
            while True:
                nl = chunk.find(b"\n", start)
                if nl < 0:
                    rest = chunk[start:]
                    if skipping is None:
                        pending += rest
                        if len(pending) > protocol.MAX_LINE_BYTES:
                            skipping, pending = pending[:200], b""
                    break
                piece = chunk[start:nl]
                start = nl + 1
                if skipping is not None:
                    reader.feed_oversized(skipping.decode("utf-8", "replace"))
                    skipping = None
                    continue
                line = pending + piece
                pending = b""
                if len(line) > protocol.MAX_LINE_BYTES:
                    reader.feed_oversized(line[:200].decode("utf-8", "replace"))
                    continue
                # errors="replace": a stray byte makes one malformed line, not a crash.
                yield line.decode("utf-8", "replace")
        if skipping is not None:
            reader.feed_oversized(skipping.decode("utf-8", "replace"))
        elif pending:
            yield pending.decode("utf-8", "replace")


@dataclasses.dataclass
class LogSet:
    """Every file read, per file and merged, with the files skipped and why."""

    readers: dict[Path, LineReader] = dataclasses.field(default_factory=dict)
    # Each file's samples as columns (its reader's record list is drained as it reads).
    columns: dict[Path, Any] = dataclasses.field(default_factory=dict)
    skipped: list[str] = dataclasses.field(default_factory=list)
    # Per file: samples that came without a phase and the phase the file's name gave them.
    assigned: dict[Path, str] = dataclasses.field(default_factory=dict)
    unphased: dict[Path, int] = dataclasses.field(default_factory=dict)
    # Per file: samples that started before the previous iteration of their tenant ended.
    stepped_back: dict[Path, int] = dataclasses.field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return sum(len(c) for c in self.columns.values())

    @property
    def merged(self) -> LineReader:
        total = LineReader()
        for reader in self.readers.values():
            total.merge(reader)
        return total


def phase_from_path(path: Path) -> str | None:
    """``solo``/``shared`` from the nearest file or folder name that says which, else None.

    Names are split into words (``fft_solo.log``, ``run3/shared/fft.log``,
    ``2024-05-01-colocated/gemm.log``); the file name is looked at first, then its folders
    upward, and a name that holds words of both phases says nothing.
    """
    for part in (path.name, *(p.name for p in path.parents)):
        words = {PHASE_WORDS[w] for w in re.split(r"[^a-z]+", part.lower()) if w in PHASE_WORDS}
        if len(words) == 1:
            return words.pop()
    return None


def _is_samples_csv(path: Path) -> bool:
    from pytest_kts.samples import CSV_COLUMNS

    with _open_binary(path) as f:
        head = f.readline(4096).decode("utf-8", "replace").strip()
    return head == ",".join(CSV_COLUMNS)


# Records are moved from a reader into columns in batches of this many: objects stay few.
_DRAIN_EVERY = 8192


def _drain(reader: LineReader, columns: Any) -> None:
    columns.add(reader.samples)
    reader.samples.clear()


def _read_samples_csv(path: Path, reader: LineReader, columns: Any, max_bytes: int | None) -> None:
    """The plugin's own ``samples/<scenario>.csv``: one Sample per row, bad rows malformed."""
    from pytest_kts.samples import CSV_COLUMNS

    lines = _read_bounded(path, reader, max_bytes=max_bytes)
    next(lines, None)  # the header, checked by _is_samples_csv
    reader.lines += 1
    for line in lines:
        reader.lines += 1
        if not line.strip():
            continue
        fields = line.rstrip("\r").split(",")
        try:
            if len(fields) != len(CSV_COLUMNS):
                raise ValueError(f"{len(fields)} fields, expected {len(CSV_COLUMNS)}")
            tenant, phase, rnd, i, start, end, host, device = fields
            sample = protocol.Sample(
                tenant=check_tenant_name(tenant),
                phase=protocol._phase(phase),
                round=int(rnd),
                iteration=int(i),
                start_ns=int(start),
                end_ns=int(end),
                host_ms=float(host) if host else math.nan,
                device_ms=float(device) if device else math.nan,
            )
            if sample.end_ns < sample.start_ns:
                reader.backwards += 1
                raise ValueError("end_ns is before start_ns")
        except ValueError as exc:
            reader.malformed += 1
            if len(reader.malformed_examples) < 5:
                reader.malformed_examples.append(f"{line.strip()[:200]!r}: {exc}")
            continue
        reader.samples.append(sample)
        if len(reader.samples) >= _DRAIN_EVERY:
            _drain(reader, columns)
    _drain(reader, columns)


def read_logs(
    files: Iterable[Path],
    *,
    solo: Sequence[Path] = (),
    shared: Sequence[Path] = (),
    max_bytes: int | None = MAX_GZ_BYTES,
) -> LogSet:
    """Read every file; give phaseless v1 samples the phase of --solo/--shared or their name."""
    logs = LogSet()
    given = [(Path(p).resolve(), "solo") for p in solo] + [
        (Path(p).resolve(), "shared") for p in shared
    ]
    for path in files:
        if path.suffix != ".gz" and _is_binary(path):
            logs.skipped.append(f"{path} (binary)")
            continue
        reader = LineReader()
        columns = SampleColumns()
        try:
            if path.name.endswith((".csv", ".csv.gz")):
                if not _is_samples_csv(path):
                    logs.skipped.append(f"{path} (a CSV, but not a samples CSV)")
                    continue
                _read_samples_csv(path, reader, columns, max_bytes)
            else:
                for line in _read_bounded(path, reader, max_bytes=max_bytes):
                    reader.feed(line)
                    if len(reader.samples) >= _DRAIN_EVERY:
                        _drain(reader, columns)
                _drain(reader, columns)
        except (OSError, EOFError) as exc:
            logs.skipped.append(f"{path} ({exc})")
            continue
        logs.readers[path] = reader
        logs.columns[path] = columns
        _assign_phase(logs, path, columns, given)
        _count_steps_back(logs, path, columns)
    return logs


def _given_phase(path: Path, given: Sequence[tuple[Path, str]]) -> str | None:
    resolved = path.resolve()
    for root, phase in given:
        if resolved == root or root in resolved.parents:
            return phase
    return None


def _assign_phase(
    logs: LogSet, path: Path, columns: Any, given: Sequence[tuple[Path, str]]
) -> None:
    cols = columns.arrays()
    missing = cols["phase"] == PHASE_CODES[protocol.UNPHASED]
    if not missing.any():
        return
    phase = _given_phase(path, given) or phase_from_path(path)
    if phase is None:
        # Left out (and said so): a sample of no known phase has nothing to be compared with.
        logs.unphased[path] = int(missing.sum())
        return
    # The file's place among this tenant's files of this phase is its round: two solo runs
    # of one tenant stay two series, never one.
    tenants = columns.tenants(missing)
    rnd = sum(
        1 for p, ph in logs.assigned.items() if ph == phase and tenants & logs.columns[p].tenants()
    )
    logs.assigned[path] = phase
    cols["phase"][missing] = PHASE_CODES[phase]
    cols["round"][missing] = rnd


def _count_steps_back(logs: LogSet, path: Path, columns: Any) -> None:
    """One worker observes its completions one after another, open loop or closed: an end
    stamp earlier than the previous one in the file means the wall clock stepped back."""
    cols = columns.arrays()
    steps = 0
    for code in columns.names.values():
        for phase in (0, 1):
            mask = (cols["tenant"] == code) & (cols["phase"] == phase)
            if not mask.any():
                continue
            rounds, end = cols["round"][mask], cols["end_ns"][mask]
            for r in np.unique(rounds):
                steps += int((np.diff(end[rounds == r]) < 0).sum())
    if steps:
        logs.stepped_back[path] = steps


# -- kts report: building a result ----------------------------------------------------------------

_WORKLOAD_GUESS = {"fft": "fft", "gemm": "matmul", "matmul": "matmul"}


def _tenant_accounting(logs: LogSet, tenant: str) -> dict[str, Any]:
    """This tenant's samples, and the line counts of the files that hold only its records."""
    out: dict[str, Any] = {
        "lines": 0,
        "samples": 0,
        "foreign": 0,
        "malformed": 0,
        "malformed_examples": [],
    }
    for path, reader in logs.readers.items():
        columns = logs.columns[path]
        cols = columns.arrays()
        if tenant in columns.names:
            known = cols["phase"] != PHASE_CODES[protocol.UNPHASED]
            out["samples"] += int(((cols["tenant"] == columns.names[tenant]) & known).sum())
        owners = columns.tenants() | {m.tenant for m in reader.metas}
        if owners == {tenant}:
            acc = reader.accounting()
            for key in ("lines", "foreign", "malformed"):
                out[key] += acc[key]
            out["malformed_examples"] += acc["malformed_examples"]
    return out


def _windows(grouped: dict[str, Any]) -> list[Any]:
    """Phase windows rebuilt from the samples: solo per tenant and round, shared per round."""
    from pytest_kts.results import PhaseWindow

    windows = []
    rounds = sorted(
        {int(r) for ts in grouped.values() for p in (ts.solo, ts.shared) for r in p.round}
    )
    for rnd in rounds:
        for name, ts in grouped.items():
            mask = ts.solo.round == rnd
            if mask.any():
                windows.append(
                    PhaseWindow(
                        "solo",
                        rnd,
                        (name,),
                        int(ts.solo.start_ns[mask].min()),
                        int(ts.solo.end_ns[mask].max()),
                    )
                )
        shared = [(n, ts.shared, ts.shared.round == rnd) for n, ts in grouped.items()]
        shared = [(n, p, m) for n, p, m in shared if m.any()]
        if shared:
            start = min(int(p.start_ns[m].min()) for _, p, m in shared)
            end = max(int(p.end_ns[m].max()) for _, p, m in shared)
            windows.append(PhaseWindow("shared", rnd, tuple(n for n, _, _ in shared), start, end))
    return sorted(windows, key=lambda w: w.started_ns)


def _meta(reader: LineReader, tenant: str) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for m in reader.metas:
        if m.tenant == tenant:
            facts.update(m.facts)
    return facts


def _spec(tenant: str, meta: dict[str, Any]) -> TenantSpec:
    workload = str(meta.get("workload") or _WORKLOAD_GUESS.get(tenant, tenant))
    size = meta.get("size")
    # TenantSpec needs a positive size; logs rarely say it (v1 never does): 1 marks "unknown".
    return TenantSpec(tenant, workload, int(size) if isinstance(size, int) and size > 0 else 1)


def build_result(name: str, logs: LogSet, *, confidence: float = 0.95) -> Any:
    """A :class:`~pytest_kts.results.ScenarioResult` from saved lines (no checks yet)."""
    from pytest_kts.results import ScenarioResult, TenantResult

    merged = logs.merged
    grouped = group_columns(logs.columns.values())
    if not grouped:
        raise UsageError(
            f"no KTS_APP sample lines in {len(logs.readers)} file(s) ({merged.lines} lines: "
            f"{merged.foreign} foreign, {merged.malformed} malformed)"
        )
    tenants = {}
    for tenant, samples in grouped.items():
        meta = _meta(merged, tenant)
        tenants[tenant] = TenantResult(
            spec=_spec(tenant, meta),
            samples=samples,
            meta=meta,
            accounting=_tenant_accounting(logs, tenant),
            confidence=confidence,
        )
    windows = _windows(grouped)
    metas = [m.facts for m in merged.metas]
    has_device = any(ts.solo.has_clock("device") for ts in grouped.values())
    device = next((str(m["device"]) for m in metas if m.get("device")), None)
    machine = {
        k: next((m[k] for m in metas if m.get(k)), None) for k in ("gpu_name", "gpu_uuid", "torch")
    }
    first = min(
        int(p.start_ns.min()) for ts in grouped.values() for p in (ts.solo, ts.shared) if len(p)
    )
    n = sum(len(ts.solo) + len(ts.shared) for ts in grouped.values())
    return ScenarioResult(
        name=name,
        device=device or ("cuda" if has_device else "cpu"),
        tenants=tenants,
        windows=windows,
        machine={**{k: v for k, v in machine.items() if v}, "source": "saved logs"},
        backend={"backend": "logs", "files": [str(p) for p in logs.readers]},
        gpu_seconds=sum(w.seconds for w in windows),
        stop_reason=f"offline: {n} samples from {len(logs.readers)} file(s)",
        confidence=confidence,
        started_at=datetime.fromtimestamp(first / 1e9, timezone.utc).isoformat(timespec="seconds"),
    )


def judge(result: Any, slo: dict[str, float], p: float, clock: str | None) -> None:
    """Fill ``result.checks`` for each SLO (tenant -> DF threshold), as the runner does."""
    for given, threshold in slo.items():
        tenant = _tenant_named(result, given)
        t = result.tenants[tenant]
        used = clock or ("host" if "host" in t.clocks() else "device")
        df = t.df(p, used)
        if df is None:
            raise UsageError(f"tenant {tenant!r} has no {used} clock in both phases")
        result.checks.append(
            {
                "tenant": tenant,
                "p": p,
                "threshold": threshold,
                "clock": used,
                "value": df.value,
                "ci": list(df.ci),
                "verdict": df.verdict(threshold),
                "looks": 1,
                "alpha": 1 - df.confidence,
            }
        )


def _accounting_lines(logs: LogSet) -> list[str]:
    m = logs.merged
    lines = [
        f"read {len(logs.readers)} file(s), {m.lines} lines: {logs.n_samples} samples, "
        f"{m.foreign} foreign, {m.malformed} malformed"
    ]
    if m.v1:
        lines[0] += f" ({m.v1} in the study's v1 format)"
    for path, phase in logs.assigned.items():
        lines.append(f"  {path}: phaseless v1 lines read as {phase}")
    lines += [f"  malformed: {e}" for e in m.malformed_examples]
    lines += [f"  skipped {s}" for s in logs.skipped]
    return lines


# -- shared by both commands -----------------------------------------------------------------------


def _parse_slo(items: Sequence[str]) -> dict[str, float]:
    slo = {}
    for item in items:
        tenant, sep, value = item.partition("=")
        try:
            threshold = float(value)
        except ValueError:
            threshold = math.nan
        if not sep or not tenant or not threshold > 0:
            raise UsageError(f"--slo {item!r}: expected TENANT=THRESHOLD, e.g. fft=1.3")
        slo[tenant] = threshold
    return slo


def _tenant_named(result: Any, name: str) -> str:
    """``name`` as the result spells it; case-insensitive, since v1 lines say FFT for fft."""
    if name in result.tenants:
        return name
    matches: list[str] = [t for t in result.tenants if t.lower() == name.lower()]
    if len(matches) != 1:
        raise UsageError(f"--slo names {name!r}; the logs hold {', '.join(result.tenants)}")
    return matches[0]


def _finish(results: Any, args: argparse.Namespace, out: IO[str], command: str) -> int:
    from pytest_kts.report import render_table, write_report

    results = results if isinstance(results, list) else [results]
    print(render_table(results), file=out)
    checks = [c for r in results for c in r.checks]
    for check in checks:
        lo, hi = check["ci"]
        print(
            f"{check['tenant']}: DF p{check['p']:g} ({check['clock']}) {check['value']:.2f} "
            f"[{lo:.2f}, {hi:.2f}] < {check['threshold']:g}: {check['verdict']}",
            file=out,
        )
    if args.out:
        written = write_report(results, Path(args.out), command=command)
        print(f"report: {len(written)} file(s) written to {args.out}", file=out)
    if args.benchmark_json:
        from pytest_kts import safefile
        from pytest_kts.baseline import github_benchmark_json

        entries = github_benchmark_json(results)
        safefile.write_text(args.benchmark_json, json.dumps(entries, indent=2) + "\n")
        print(f"github-action-benchmark JSON: {args.benchmark_json}", file=out)
    failed = any(c["verdict"] == "fail" for c in checks)
    return EXIT_FAILED if failed else EXIT_OK


def _log_warnings(logs: LogSet) -> list[str]:
    warnings = []
    merged = logs.merged
    if merged.v1:
        warnings.append(V1_NOTE)
    if merged.malformed:
        warnings.append(f"{merged.malformed} malformed KTS_ line(s) ignored (examples above)")
    if merged.backwards:
        warnings.append(
            f"{merged.backwards} sample line(s) end before they start: time.time_ns() went "
            "backwards (an NTP step?); they are left out"
        )
    for path, n in logs.stepped_back.items():
        warnings.append(
            f"{path}: {n} iteration(s) end before the one before them: the wall clock stepped "
            "back during the run; host latencies near those lines are suspect"
        )
    for path, n in logs.unphased.items():
        warnings.append(
            f"{path}: {n} sample(s) with no phase left out: name the file or its folder "
            "solo/shared, or pass it with --solo/--shared"
        )
    return warnings


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
        result.warnings += _log_warnings(logs)
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
        result = build_result(name, one, confidence=args.confidence)
        result.warnings += _log_warnings(one)
        results.append(result)
    return results, all_logs


def cmd_report(args: argparse.Namespace, out: IO[str]) -> int:
    named = [*args.logs, *args.solo, *args.shared]
    if not named:
        raise UsageError("name at least one LOGDIR, or --solo/--shared paths")
    files = find_logs([Path(p) for p in named], args.glob or LOG_PATTERNS)
    if not files:
        raise UsageError(f"no log files ({', '.join(args.glob or LOG_PATTERNS)}) in {named}")
    results, logs = _report_results(args, files)
    slo = _parse_slo(args.slo)
    for result in results:
        judge(result, {t: v for t, v in slo.items() if _has_tenant(result, t)}, args.p, args.clock)
    missing = [t for t in slo if not any(_has_tenant(r, t) for r in results)]
    if missing:
        held = sorted({t for r in results for t in r.tenants})
        raise UsageError(f"--slo names {missing[0]!r}; the logs hold {', '.join(held)}")
    for line in _accounting_lines(logs):
        print(line, file=out)
    return _finish(results, args, out, "kts " + shlex.join(args.argv))


def _has_tenant(result: Any, name: str) -> bool:
    return name in result.tenants or any(t.lower() == name.lower() for t in result.tenants)


# -- kts run ---------------------------------------------------------------------------------------

_SPEC_FIELDS = {
    "name": str,
    "size": int,
    "sleep_ms": float,
    "warmup": int,
    "arrival": str,
    "rate_hz": float,
    "seed": int,
}


def parse_tenant(text: str, taken: Iterable[str] = ()) -> TenantSpec:
    """``WORKLOAD[:key=value,...]`` -> TenantSpec. ``module:function`` workloads work too.

    Known keys fill TenantSpec fields (name, size, sleep_ms, warmup, arrival, rate_hz, seed);
    any other key is a workload parameter. The name defaults to the workload's, made unique.
    """
    workload, sep, options = text.rpartition(":")
    if not sep or "=" not in options:
        workload, options = text, ""
    if not workload:
        raise UsageError(f"--tenant {text!r}: no workload (e.g. fft:size=4096,sleep_ms=100)")
    fields: dict[str, Any] = {}
    params: dict[str, str] = {}
    for item in filter(None, options.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"--tenant {text!r}: {item!r} is not key=value")
        if key in _SPEC_FIELDS:
            try:
                fields[key] = _SPEC_FIELDS[key](value)
            except ValueError:
                raise UsageError(f"--tenant {text!r}: {key}={value!r} is not a number") from None
        else:
            params[key] = value
    if fields.get("arrival") not in (None, *ARRIVALS):
        raise UsageError(f"--tenant {text!r}: arrival must be one of {', '.join(ARRIVALS)}")
    base = fields.pop("name", None) or workload.rsplit(".", 1)[-1].rsplit(":", 1)[-1]
    name, k = base, 2
    while name in set(taken):
        name, k = f"{base}-{k}", k + 1
    try:
        check_tenant_name(name)
        return TenantSpec(
            name=name, workload=workload, size=fields.pop("size", 4096), params=params, **fields
        )
    except ValueError as exc:
        raise UsageError(f"--tenant {text!r}: {exc}") from None


def cmd_run(args: argparse.Namespace, out: IO[str]) -> int:
    from pytest_kts.config import RunSettings
    from pytest_kts.machine import facts, resolve_device
    from pytest_kts.progress import Progress
    from pytest_kts.runner import run_scenario
    from workers.workloads import check as check_workload

    tenants: list[TenantSpec] = []
    for text in args.tenant:
        spec = parse_tenant(text, [t.name for t in tenants])
        try:
            # Before anything spawns: an unknown workload or param, with what is allowed.
            check_workload(spec.workload, spec.params)
        except ValueError as exc:
            raise UsageError(f"--tenant {text!r}: {exc}") from None
        tenants.append(spec)
    if len(tenants) < 2:
        raise UsageError("kts run needs at least two --tenant options (co-location needs two)")
    slo = _parse_slo(args.slo)
    changes: dict[str, Any] = {"device": args.device, "confidence": args.confidence}
    if args.iterations:
        # With SLOs the run is adaptive: N is then the most it may take, not a fixed count.
        changes["max_iterations" if slo else "iterations"] = args.iterations
        changes["round_iterations"] = min(args.iterations, RunSettings.round_iterations)
    if args.timeout:
        changes["timeout"] = args.timeout
    settings = dataclasses.replace(RunSettings(), **changes)
    device = resolve_device(args.device)
    progress = Progress(sys.stderr, args.verbose - args.quiet, label=args.name)
    result = run_scenario(
        args.name,
        tenants,
        settings,
        slo=slo or None,
        p=args.p,
        progress=progress,
        device=device,
        telemetry_factory=_telemetry_factory(device),
        machine=facts(device),
    )
    if result.telemetry is not None:
        result.warnings += result.telemetry.clock_warnings(result.windows)
    return _finish(result, args, out, "kts " + shlex.join(args.argv))


def _telemetry_factory(device: str) -> Any:
    if device != "cuda":
        return None
    from pytest_kts.telemetry import TelemetrySampler

    if TelemetrySampler.unavailable_reason() is not None:
        return None
    return lambda: TelemetrySampler(0)


# -- argument parsing ------------------------------------------------------------------------------


def _positive(kind: type[int] | type[float]) -> Any:
    """An argparse type: a positive int or float; anything else is a usage error (exit 2)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _confidence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.5 <= value < 1:
        raise argparse.ArgumentTypeError(f"confidence must be in [0.5, 1), got {text}")
    return value


def _percentile(text: str) -> float:
    value = float(text)
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"percentile must be in (0, 100), got {text}")
    # 99, not 99.0: the same DF and interval as the table, which asks for p=99.
    return int(value) if value.is_integer() else value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--slo",
        action="append",
        default=[],
        metavar="TENANT=DF",
        help="fail (exit 1) when TENANT's DF is above DF with confidence",
    )
    parser.add_argument("--p", type=_percentile, default=99, help="percentile of the DF (99)")
    parser.add_argument(
        "--confidence", type=_confidence, default=0.95, help="of every interval (0.95)"
    )
    parser.add_argument("--name", help="scenario name in the table and report")
    parser.add_argument(
        "--benchmark-json",
        metavar="FILE",
        help="also write github-action-benchmark customSmallerIsBetter JSON",
    )


REPORT_HELP = (
    "Read files of protocol lines (KTS_APP,v2, and the original study's KTS_APP,v1), print the "
    "same table as the pytest plugin, and optionally write the report files. Lines that are "
    "not ours (foreign) or ours but broken (malformed) are counted and reported."
)
RUN_HELP = (
    "Run tenants solo and then co-located, without a test file, and print the table. With "
    "--slo the run is adaptive: it stops as soon as every SLO is decided. Example: kts run "
    "--tenant fft:size=4096,sleep_ms=20 --tenant matmul:size=4096,sleep_ms=30 --slo fft=1.3"
)
EXIT_HELP = "Exit codes: 0 ok, 1 a verdict failed, 2 a usage or input error."


def build_parser() -> argparse.ArgumentParser:
    # Plain text throughout: --help is read in a terminal, not rendered as rst.
    parser = _Parser(
        prog="kts", description="GPU co-location tail latency, outside pytest.", epilog=EXIT_HELP
    )
    sub = parser.add_subparsers(dest="command", metavar="{report,run}")
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
        type=int,
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
    _common(report)
    run = sub.add_parser(
        "run", help="run a scenario without a test file", description=RUN_HELP, epilog=EXIT_HELP
    )
    run.add_argument(
        "--tenant",
        action="append",
        default=[],
        required=True,
        metavar="WORKLOAD[:k=v,...]",
        help="e.g. fft:size=4096,sleep_ms=100 (name=, warmup=, arrival=, rate_hz=, "
        "seed=; other keys go to the workload)",
    )
    run.add_argument(
        "--device", choices=DEVICES, default="auto", help="where tenants run (default auto)"
    )
    run.add_argument(
        "--iterations",
        type=_positive(int),
        metavar="N",
        help="iterations per tenant and phase (with --slo: the most before giving up)",
    )
    run.add_argument(
        "--timeout", type=_positive(float), metavar="S", help="seconds one phase may take"
    )
    run.add_argument("--report", dest="out", metavar="DIR", help="write the report files here")
    run.add_argument("-q", "--quiet", action="count", default=0, help="no progress line")
    run.add_argument("-v", "--verbose", action="count", default=0, help="more progress lines")
    _common(run)
    run.set_defaults(name="ad-hoc")
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
    except signals.Terminated as exc:
        print(f"kts {args.command}: {exc}", file=sys.stderr)
        return 143  # 128 + SIGTERM, as a shell reports it
    except KeyboardInterrupt:
        print(f"kts {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
