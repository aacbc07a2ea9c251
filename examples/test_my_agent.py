"""Copy this file to gate your own tenant's tail latency next to a noisy neighbour.

    pytest examples/test_my_agent.py

Each ``kts.run`` measures every tenant alone (solo rounds) and then all together (shared
rounds); the degradation factor (DF) is the shared p99 over the solo p99. The test fails when
the router's p99 grows by 2x or more next to a busy decode loop (on a GPU; the CPU version
uses a looser bound, since the cores are shared with everything else).
"""

from __future__ import annotations

import pytest

from pytest_kts import assert_df


@pytest.mark.gpu
def test_router_keeps_its_tail_next_to_decode(kts):
    # Same shape of scenario on a laptop CPU, just smaller models.
    on_gpu = kts.device == "cuda"
    router = kts.tenant(
        "router",
        workload="examples.my_agent:build",
        size=512 if on_gpu else 128,
        sleep_ms=5,
    )
    # The noisy neighbour: a closed-loop decode with no sleep and no SLO of its own.
    kts.tenant(
        "decode",
        workload="decode",
        size=512 if on_gpu else 128,
        sleep_ms=0,
        params={} if on_gpu else {"layers": "2", "vocab": "4096", "max_seq": "256"},
    )
    # On a GPU, the SLO you mean: on an H200 this router's DF was 1.17 [0.83, 1.66] after the
    # whole budget (its slow iterations come in runs), so 1.5 sat inside what the budget can
    # tell apart and the check ended undecided; 2x is decided. On a shared CPU, a loose one:
    # the router and the busy decode each want a core, and a 2-core machine has other work.
    slo = 2.0 if on_gpu else 4.0
    # On a CPU the router's slow iterations come in runs whenever the OS gives the decode its
    # core (on a 2-core machine with other work, 27 p99 exceedances fell in 6 runs): a p99
    # bound would need several thousand samples, a p95 bound a few hundred.
    p = 99 if on_gpu else 95
    kts.run(slo={router: slo}, p=p)
    assert assert_df(router, p=p) < slo
