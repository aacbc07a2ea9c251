"""Copy this file to gate your own tenant's tail latency next to a noisy neighbour.

    pytest examples/test_my_agent.py

Each ``kts.run`` measures every tenant alone (solo rounds) and then all together (shared
rounds); the degradation factor (DF) is the shared p99 over the solo p99. The test fails when
the router's p99 grows by 4x or more next to a busy decode loop, on a GPU or a CPU.
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
    # The SLO: a regression that quadruples the router's p99 fails. Pick the one you mean, and
    # one that your GPU lets a budget decide. This scenario's DF differs from machine to
    # machine: on three H100s it was 1.36 [1.08, 1.74], 1.13 [0.59, 2.16] (a machine whose solo
    # tail came in bursts) and 1.99 [1.25, 3.18] (a faster solo, 0.34 ms at p99). The last two
    # were undecided against 2 and 3 after the whole budget of 3200 iterations; 4 is decided on
    # all three. On a shared CPU, a loose one too: the router and the busy decode each want a
    # core, and a 2-core machine has other work.
    slo = 4.0
    # On a CPU the router's slow iterations come in runs whenever the OS gives the decode its
    # core (on a 2-core machine with other work, 27 p99 exceedances fell in 6 runs): a p99
    # bound would need several thousand samples, a p95 bound a few hundred.
    p = 99 if on_gpu else 95
    kts.run(slo={router: slo}, p=p)
    assert assert_df(router, p=p) < slo
