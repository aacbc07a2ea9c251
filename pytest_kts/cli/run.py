"""``kts run``: run tenants solo and co-located without a test file, and print the table."""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

from pytest_kts.backends.base import TenantSpec
from pytest_kts.cli.common import (
    EXIT_HELP,
    EXIT_OK,
    Parser,
    UsageError,
    add_common_options,
    check_outputs,
    finish,
    parse_slo,
    setting,
)
from pytest_kts.config import DEVICES, OPTIONS, RunSettings, resolve
from pytest_kts.constants import ARRIVALS
from pytest_kts.protocol import check_tenant_name

RUN_HELP = (
    "Run tenants solo and then co-located, without a test file, and print the table. With "
    "--slo the run is adaptive: it stops as soon as every SLO is decided. Example: kts run "
    "--tenant fft:size=4096,sleep_ms=20 --tenant matmul:size=4096,sleep_ms=30 --slo fft=1.3. "
    "With --cluster the tenants run as Kubernetes Jobs (the cluster options below, as the "
    "plugin's --kts-* ones); --cluster --dry-run prints every manifest the run would create, "
    "as YAML, and contacts no cluster."
)
# The plugin's cluster options, each as --NAME here (--kts-NAME there); --dry-run is one.
CLUSTER_OPTIONS = [
    o for o in OPTIONS if (o.cluster or o.name == "cluster") and o.name != "prometheus"
]


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
    given = fields.pop("name", None)
    if given is not None and given in set(taken):
        raise UsageError(f"--tenant {text!r}: tenant name {given!r} is given twice")
    base = given or workload.rsplit(".", 1)[-1].rsplit(":", 1)[-1]
    name, k = base, 2
    while name in set(taken):  # an unnamed workload's second copy: fft-2, fft-3, ...
        name, k = f"{base}-{k}", k + 1
    try:
        check_tenant_name(name)
        return TenantSpec(
            name=name, workload=workload, size=fields.pop("size", 4096), params=params, **fields
        )
    except ValueError as exc:
        raise UsageError(f"--tenant {text!r}: {exc}") from None


def parse_tenants(texts: Sequence[str]) -> list[TenantSpec]:
    """Every ``--tenant``, named. Names the user gave are theirs: an unnamed copy of a
    workload is numbered around them (fft, fft-2, ...), and a name given twice is an error
    (a silently renamed tenant would take another's ``--slo``)."""
    given = [n for n in map(_given_name, texts) if n is not None]
    tenants: list[TenantSpec] = []
    for text in texts:
        own = _given_name(text)
        reserved = [] if own is not None else given
        tenants.append(parse_tenant(text, [t.name for t in tenants] + reserved))
    return tenants


def _given_name(text: str) -> str | None:
    """The ``name=`` a ``--tenant`` text gives, if any."""
    _, sep, options = text.rpartition(":")
    if not sep:
        return None
    for item in options.split(","):
        key, eq, value = item.partition("=")
        if eq and key == "name":
            return value
    return None


def _settings(args: argparse.Namespace, slo: dict[str, float], tenants: int) -> RunSettings:
    """The run's settings: the cluster options resolved as the plugin resolves them (command
    line > KTS_* environment > default), then this command's own."""
    from pytest_kts.config import MIN_PHASE_SECONDS

    cli = {o.name: getattr(args, o.name) for o in CLUSTER_OPTIONS}
    changes: dict[str, Any] = {"device": args.device, "confidence": args.confidence}
    if args.iterations:
        # With SLOs the run is adaptive: N is then the most it may take, not a fixed count.
        changes["max_iterations" if slo else "iterations"] = args.iterations
        # Rounds of the plugin's size, but never more than the time allows (kts run has no
        # --round-iterations): each phase keeps at least MIN_PHASE_SECONDS.
        rounds = int(RunSettings.max_seconds / (2 * MIN_PHASE_SECONDS * (tenants + 1)))
        per_round = max(RunSettings.round_iterations, math.ceil(args.iterations / max(rounds, 1)))
        changes["round_iterations"] = min(args.iterations, per_round)
    if args.timeout:
        changes["timeout"] = args.timeout
    cluster = {o.name for o in CLUSTER_OPTIONS}
    resolved = resolve(cli, {})
    return dataclasses.replace(
        RunSettings(), **{k: getattr(resolved, k) for k in cluster}, **changes
    )


def cmd_run(args: argparse.Namespace, out: IO[str]) -> int:
    from pytest_kts.config import check_plan
    from pytest_kts.machine import facts, resolve_device
    from pytest_kts.progress import Progress
    from pytest_kts.runner import run_scenario
    from pytest_kts.workers.workloads import check as check_workload

    slo = parse_slo(args.slo)
    check_outputs(args)
    tenants = parse_tenants(args.tenant)
    for text, spec in zip(args.tenant, tenants, strict=True):
        try:
            # Before anything spawns: an unknown workload or param, with what is allowed.
            check_workload(spec.workload, spec.params)
        except ValueError as exc:
            raise UsageError(f"--tenant {text!r}: {exc}") from None
    if len(tenants) < 2:
        raise UsageError("kts run needs at least two --tenant options (co-location needs two)")
    settings = _settings(args, slo, len(tenants))
    check_plan(settings, len(slo) + 1 if slo else len(tenants) + 1, adaptive=bool(slo))
    if settings.dry_run:
        return _dry_run(tenants, settings, slo, args, out)
    if settings.cluster:
        from pytest_kts.backends.kubernetes import check_reachable, cluster_settings

        check_reachable(cluster_settings(settings))  # one line when the cluster cannot be used
        device = "cuda" if args.device == "auto" else args.device
    else:
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
    return finish(result, args, out, "kts " + shlex.join(args.argv))


def _dry_run(
    tenants: list[TenantSpec],
    settings: RunSettings,
    slo: dict[str, float],
    args: argparse.Namespace,
    out: IO[str],
) -> int:
    """Print every manifest the cluster run would create; contact no cluster."""
    from pytest_kts import dryrun

    if not settings.cluster:
        raise UsageError("--dry-run shows what a cluster run would create: add --cluster")
    device = "cuda" if args.device == "auto" else args.device
    documents = dryrun.manifests(tenants, settings, slo or None, args.p, device)
    title = (
        f"kts run, {len(tenants)} tenants, namespace {settings.namespace}, "
        f"--gpu-request {settings.gpu_request}"
    )
    out.write(dryrun.to_yaml(documents, title))
    return EXIT_OK


def _telemetry_factory(device: str) -> Any:
    if device != "cuda":
        return None
    from pytest_kts.telemetry import TelemetrySampler

    if TelemetrySampler.unavailable_reason() is not None:
        return None
    return lambda: TelemetrySampler(0)


def add_run_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add ``kts run`` and its options to the subcommands of ``kts``."""
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
        type=setting("iterations"),
        metavar="N",
        help="iterations per tenant and phase (with --slo: the most before giving up)",
    )
    run.add_argument(
        "--timeout", type=setting("timeout"), metavar="S", help="seconds one phase may take"
    )
    run.add_argument("--report", dest="out", metavar="DIR", help="write the report files here")
    group = run.add_argument_group("cluster (as the plugin's --kts-* options; KTS_* too)")
    for option in CLUSTER_OPTIONS:
        flag = "--" + option.name.replace("_", "-")
        if option.flag:
            group.add_argument(flag, action="store_true", default=None, help=option.help)
        else:
            metavar = "{" + ",".join(option.choices) + "}" if option.choices else None
            group.add_argument(flag, default=None, metavar=metavar, help=option.help)
    run.add_argument("-q", "--quiet", action="count", default=0, help="no progress line")
    run.add_argument("-v", "--verbose", action="count", default=0, help="more progress lines")
    add_common_options(run)
    run.set_defaults(name="ad-hoc")
