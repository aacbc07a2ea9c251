"""``kts report``'s input: find log files, read their protocol lines and samples CSVs
(bounded, phase from the file name or --solo/--shared), and build one result from them."""

from __future__ import annotations

import dataclasses
import fnmatch
import gzip
import io
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pytest_kts import protocol
from pytest_kts.backends.base import TenantSpec
from pytest_kts.cli.common import UsageError
from pytest_kts.protocol import LineReader
from pytest_kts.samples import PHASE_CODES, SampleColumns, group_columns, sample_from_row

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

    lines = _read_bounded(path, reader, max_bytes=max_bytes)
    next(lines, None)  # the header, checked by _is_samples_csv
    reader.lines += 1
    for line in lines:
        reader.lines += 1
        if not line.strip():
            continue
        try:
            sample = sample_from_row(line.rstrip("\r").split(","))
        except ValueError as exc:
            reader.backwards += isinstance(exc, protocol.ClockWentBackwards)
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
        except (OSError, EOFError, zlib.error) as exc:  # a .gz that is not whole
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
        skipped = f"; skipped {'; '.join(logs.skipped)}" if logs.skipped else ""
        raise UsageError(
            f"no KTS_APP sample lines in {len(logs.readers)} file(s) ({merged.lines} lines: "
            f"{merged.foreign} foreign, {merged.malformed} malformed){skipped}"
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


def accounting_lines(logs: LogSet) -> list[str]:
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


def log_warnings(logs: LogSet) -> list[str]:
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
