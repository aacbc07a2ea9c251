"""The co-location and overlap checks every backend shares (pure functions)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pytest_kts import colocation
from pytest_kts.errors import ColocationError


def test_one_gpu_or_an_error_naming_each_tenants_gpu() -> None:
    colocation.check_one_gpu({"a": "GPU-1", "b": "GPU-1", "c": None}, "hint")
    colocation.check_one_gpu({"a": None, "b": None}, "hint")  # a CPU run: nothing to check
    with pytest.raises(ColocationError, match=r"a: GPU-1, b: GPU-2.*pin them"):
        colocation.check_one_gpu({"a": "GPU-1", "b": "GPU-2"}, "pin them")


def test_a_shared_phase_is_verified_partly_checked_or_not_checked() -> None:
    where = {"a": "node n1", "b": "node n2"}
    found = colocation.verify_shared_phase(3, {"a": "G1", "b": "G1"}, where, {}, hint="-")
    assert found.status == "verified: all tenants on G1" and found.notes == []
    moved = colocation.verify_shared_phase(3, {"a": "G1", "b": "G1"}, where, {"a": "G0"}, hint="")
    assert "solo phases ran on {'a': 'G0'}" in moved.notes[0]
    partial = colocation.verify_shared_phase(3, {"a": "G1", "b": None}, where, {}, hint="")
    assert partial.status == "partial: no GPU UUID from ['b']"
    cpu = colocation.verify_shared_phase(3, {"a": None, "b": None}, where, {}, hint="")
    assert cpu.status.startswith("not checked") and "round 3" in cpu.notes[0]
    with pytest.raises(ColocationError, match=r"round 3.*a on G1 \(node n1\).*PIN"):
        colocation.verify_shared_phase(3, {"a": "G1", "b": "G2"}, where, {}, hint="PIN")


def _samples(*spans: tuple[int, int]) -> list[SimpleNamespace]:
    return [SimpleNamespace(start_ns=b, end_ns=e) for b, e in spans]


def test_only_the_window_every_tenant_measured_is_kept() -> None:
    kept, window = colocation.trim_to_overlap(
        0, {"a": _samples((0, 5), (10, 15), (20, 25)), "b": _samples((8, 12), (14, 30))}
    )
    assert window == (8, 25)
    assert [(s.start_ns, s.end_ns) for s in kept["a"]] == [(10, 15), (20, 25)]
    assert [(s.start_ns, s.end_ns) for s in kept["b"]] == [(8, 12)]
    alone, none = colocation.trim_to_overlap(0, {"a": _samples((0, 5)), "b": []})
    assert none is None and len(alone["a"]) == 1
    with pytest.raises(ColocationError, match=r"never measured at the same time.*too far"):
        colocation.trim_to_overlap(
            0, {"a": _samples((0, 5)), "b": _samples((6, 9))}, hint="too far apart"
        )
