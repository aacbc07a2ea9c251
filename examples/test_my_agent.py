"""Copy this file to gate your own tenant's tail latency next to a noisy neighbour.

    pytest examples/test_my_agent.py

Each ``kts.run`` measures every tenant alone (solo rounds) and then all together (shared
rounds); the degradation factor (DF) is the shared p99 over the solo p99. The test fails when
the router's p99 grows by 1.5x or more next to a busy decode loop (on a GPU; the CPU
version uses a looser bound, since the cores are shared with everything else).
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
    # On a GPU, the SLO you mean. On a shared CPU, a loose one: the router and the busy
    # decode each want a core, and a 2-core machine has other work too.
    slo = 1.5 if on_gpu else 4.0
    kts.run(slo={router: slo})
    assert assert_df(router, p=99) < slo
