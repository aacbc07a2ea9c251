"""The dry run (``kts run --cluster --dry-run``, ``pytest --kts-cluster --kts-dry-run``): every
object a cluster run would create, rendered as the backend renders it, contacting no cluster.

What it shows is the first round exactly: one solo phase per tenant (the SLO tenants' only, in
an adaptive run's calibration) and the shared phase, with the ResourceClaim of each phase under
DRA. Later rounds (and an adaptive run's looks) create the same objects again with the next
sequence numbers and their own iteration counts, which depend on what was measured; a comment
at the top of the output says so. The plans follow :func:`pytest_kts.runner.run_scenario`'s
first round (``tests/test_dryrun.py`` keeps the two equal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_kts.backends.base import PhasePlan, TenantSpec
from pytest_kts.config import RunSettings
from pytest_kts.runner import CALIBRATION_ITERATIONS, CALIBRATION_SHARE, STOP_MARGIN_S, plan_checks


def first_round(
    tenants: Sequence[str], settings: RunSettings, slo: Mapping[str, float] | None, p: float = 99
) -> list[PhasePlan]:
    """The phases of the run's first round, with their time shares, as the runner plans them."""
    checks = plan_checks(slo, p, tenants)
    left = min(settings.max_seconds, settings.budget_seconds)
    if checks:
        focal = list(dict.fromkeys(c.tenant for c in checks))
        n = min(settings.round_iterations, CALIBRATION_ITERATIONS)
        plans = [PhasePlan("solo", 0, {t: n}) for t in focal]
        plans.append(PhasePlan("shared", 0, {t: n if t in focal else 0 for t in tenants}))
        share = max(left * CALIBRATION_SHARE / len(plans), 0.5)
    else:
        n = min(settings.round_iterations, settings.iterations)
        rounds = max(1, math.ceil(settings.iterations / settings.round_iterations))
        plans = [PhasePlan("solo", 0, {t: n}) for t in tenants]
        plans.append(PhasePlan("shared", 0, dict.fromkeys(tenants, n)))
        share = left / (rounds * len(plans))
    share = min(share, left - STOP_MARGIN_S)  # what the runner clips a phase's share to
    return [PhasePlan(x.phase, x.round, x.iterations, max_seconds=share) for x in plans]


def manifests(
    tenants: Sequence[TenantSpec],
    settings: RunSettings,
    slo: Mapping[str, float] | None = None,
    p: float = 99,
    device: str = "cuda",
) -> list[dict[str, Any]]:
    """The first round's objects in the order a run creates them (claim, then its Jobs)."""
    from pytest_kts.backends.kubernetes import KubernetesBackend, cluster_settings

    backend = KubernetesBackend(cluster_settings(settings))
    plans = first_round([t.name for t in tenants], settings, slo, p)
    return backend.preview(tenants, device, plans, settings.timeout)


def to_yaml(documents: Sequence[Mapping[str, Any]], title: str) -> str:
    """YAML documents, each after ``---``, under a comment saying what they are."""
    import yaml  # a dependency of the kubernetes client, as for the Job template

    head = [
        f"# pytest-kts dry run: {title}",
        "# The first round's objects, in the order a run creates them; nothing was sent to a",
        "# cluster. Later rounds (and an adaptive run's looks) create the same objects again with",
        "# the next sequence numbers. Check them: kubectl apply --dry-run=server -f FILE",
    ]
    body = "".join(
        "---\n" + yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False)
        for doc in documents
    )
    return "\n".join(head) + "\n" + body
