from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_kts.protocol import (
    Event,
    LineReader,
    Meta,
    ProtocolError,
    Sample,
    format_event,
    format_meta,
    format_sample,
    parse_line,
)

STUDY_LINES = [
    "KTS_APP,v1,FFT,0,1712000000000000000,1712000000003679000,3.679123,solo",
    "KTS_APP,v1,FFT,1,1712000000103679000,1712000000107000000,3.321000,shared",
    "KTS_APP,v1,GEMM,7,1712000000000000000,1712000000020985000,20.985000,SHARED",
]

names = st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True)
latency = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def samples(draw: st.DrawFn) -> Sample:
    start = draw(st.integers(min_value=0, max_value=2**62))
    return Sample(
        tenant=draw(names),
        phase=draw(st.sampled_from(["solo", "shared"])),
        round=draw(st.integers(0, 10_000)),
        iteration=draw(st.integers(0, 10**9)),
        start_ns=start,
        end_ns=start + draw(st.integers(0, 10**12)),
        host_ms=draw(latency),
        device_ms=draw(st.one_of(st.just(math.nan), latency)),
    )


@given(samples())
def test_v2_sample_round_trips(sample: Sample) -> None:
    parsed = parse_line(format_sample(sample))
    assert isinstance(parsed, Sample)
    assert parsed.tenant == sample.tenant
    assert (parsed.phase, parsed.round, parsed.iteration) == (
        sample.phase,
        sample.round,
        sample.iteration,
    )
    assert (parsed.start_ns, parsed.end_ns) == (sample.start_ns, sample.end_ns)
    assert parsed.host_ms == pytest.approx(sample.host_ms, abs=1e-6)
    if math.isnan(sample.device_ms):
        assert math.isnan(parsed.device_ms)
    else:
        assert parsed.device_ms == pytest.approx(sample.device_ms, abs=1e-6)


def test_study_v1_lines_read_unchanged() -> None:
    reader = LineReader().feed_all(STUDY_LINES)
    assert reader.malformed == 0 and reader.foreign == 0
    first, second, gemm = reader.samples
    assert first.tenant == "fft" and first.phase == "solo" and first.iteration == 0
    assert first.device_ms == pytest.approx(3.679123)
    # The study's epoch stamps bracket launch to observed completion: that is the host clock.
    assert first.host_ms == pytest.approx(3.679)
    assert reader.v1 == 3
    assert second.phase == "shared"
    assert gemm.tenant == "gemm" and gemm.phase == "shared" and gemm.iteration == 7


def test_meta_and_event_round_trip() -> None:
    meta = parse_line(format_meta("fft", {"gpu_uuid": "GPU-1234", "device": "cuda"}))
    assert meta == Meta("fft", {"gpu_uuid": "GPU-1234", "device": "cuda"})
    event = parse_line(format_event("fft", "phase_end", {"n": 3}))
    assert event == Event("fft", "phase_end", {"n": 3})


@pytest.mark.parametrize(
    "line",
    [
        "KTS_APP,v2,fft,solo,0,1,100,200,0.500000",  # a field short: truncated
        "KTS_APP,v2,fft,solo,0,1,100,200,0.500000,0.400000,9",  # a field too many
        "KTS_APP,v2,fft,lunch,0,1,100,200,0.500000,0.400000",  # unknown phase
        "KTS_APP,v2,fft,solo,0,1,200,100,0.500000,0.400000",  # ends before it starts
        "KTS_APP,v2,fft,solo,0,1,100,200,-1.000000,0.400000",  # negative latency
        "KTS_APP,v2,fft,solo,0,1,100,200,inf,0.400000",  # infinite latency
        "KTS_APP,v2,fft,solo,0,1,100,200,,0.400000",  # no host latency
        "KTS_APP,v2,f ft,solo,0,1,100,200,0.500000,0.400000",  # bad tenant name
        "KTS_APP,v1,FFT,0,1,2,abc,solo",  # v1 with a bad latency
        "KTS_APP,v9,FFT,0,1,2,3,solo",  # unknown version
        "KTS_META,v2,fft,[1,2]",  # payload not an object
        "KTS_EVENT,v2,fft,ready",  # no payload
    ],
)
def test_malformed_lines_raise_protocol_error(line: str) -> None:
    with pytest.raises(ProtocolError):
        parse_line(line)


def test_reader_counts_every_line_and_keeps_examples() -> None:
    good = format_sample(Sample("fft", "solo", 0, 0, 1, 2, 0.1, math.nan))
    lines = [good, "", "torch warning: something", "KTS_APP,v2,garbage", good, "KTS_APP,v2,x"]
    reader = LineReader().feed_all(lines)
    assert len(reader.samples) == 2
    assert reader.foreign == 1  # blank lines are not counted as foreign
    assert reader.malformed == 2
    assert reader.lines == len(lines)
    assert "garbage" in reader.malformed_examples[0]
    acc = reader.accounting()
    assert acc["samples"] + acc["foreign"] + acc["malformed"] == 5


def test_log_prefix_before_marker_is_tolerated() -> None:
    line = "2026-11-24T02:00:00.123Z stdout F " + STUDY_LINES[0]
    assert isinstance(parse_line(line), Sample)


@settings(max_examples=400)
@given(st.lists(st.text(max_size=120), max_size=30))
def test_garbage_is_never_fatal_and_always_accounted(lines: list[str]) -> None:
    reader = LineReader()
    for line in lines:
        reader.feed(line)
    blank = sum(1 for line in lines if not line.strip())
    assert reader.lines == len(lines)
    parsed = len(reader.samples) + len(reader.metas) + len(reader.events)
    assert parsed + reader.foreign + reader.malformed + blank >= len(lines)


@given(samples(), st.integers(min_value=1, max_value=60))
def test_truncated_sample_lines_are_malformed_not_wrong(sample: Sample, cut: int) -> None:
    line = format_sample(sample)
    truncated = line[: max(len("KTS_"), len(line) - cut)]
    reader = LineReader()
    # A line cut anywhere (a worker killed mid-write) is malformed, never a smaller latency.
    assert reader.feed(truncated) is None
    assert reader.malformed == 1


def test_merge_adds_accounting() -> None:
    a = LineReader().feed_all(["x", STUDY_LINES[0]])
    b = LineReader().feed_all(["KTS_APP,v2,bad", STUDY_LINES[1]])
    a.merge(b)
    assert (a.lines, a.foreign, a.malformed, len(a.samples)) == (4, 1, 1, 2)


T = 1_714_550_000_000_000_000


@pytest.mark.parametrize(
    ("line", "phase"),
    [
        (f"KTS_APP,v1,FFT,3,{T},{T + 2_500_000},2.400000,", ""),  # the study's empty phase
        (f"KTS_APP,v1,FFT,3,{T},{T + 2_500_000},2.400000", ""),  # the field left out
        (f"KTS_APP,v1,FFT,3,{T},{T + 2_500_000},2.400000, Shared ", "shared"),
    ],
)
def test_v1_phase_is_optional(line: str, phase: str) -> None:
    s = parse_line(line)
    assert isinstance(s, Sample)
    assert s.phase == phase and s.tenant == "fft" and s.iteration == 3
    assert s.host_ms == pytest.approx(2.5) and s.device_ms == pytest.approx(2.4)


@pytest.mark.parametrize(
    "line",
    [
        f"KTS_APP,v1,FFT,3,{T},{T + 2_500_000},2.4",  # phaseless, cut inside the latency
        f"KTS_APP,v1,FFT,3,{T},{T + 2_500_000},2.40000",
        f"KTS_APP,v1,FFT,3,{T},{T + 2_500_000},2.400000,sha",  # cut inside the phase
        f"KTS_APP,v1,FFT,3,{T},{T + 25}",  # cut after the end stamp
    ],
)
def test_v1_lines_cut_short_are_malformed(line: str) -> None:
    with pytest.raises(ProtocolError):
        parse_line(line)


def test_clock_going_backwards_is_flagged_not_just_malformed() -> None:
    from pytest_kts.protocol import ClockWentBackwards

    line = f"KTS_APP,v1,FFT,3,{T + 10},{T},2.400000,"
    with pytest.raises(ClockWentBackwards):
        parse_line(line)
    reader = LineReader().feed_all([line, STUDY_LINES[0]])
    assert (reader.malformed, reader.backwards, len(reader.samples)) == (1, 1, 1)
    assert reader.accounting()["backwards"] == 1


def test_oversized_lines_are_accounted_without_their_text() -> None:
    reader = LineReader()
    reader.feed_oversized("KTS_APP,v1," + "9" * 150)
    assert (reader.lines, reader.malformed, reader.oversized) == (1, 1, 1)
    assert len(reader.malformed_examples[0]) < 150


@pytest.mark.parametrize("name", [5, None, "a\n", "", "a b", "-a", "x" * 64])
def test_a_tenant_name_that_is_not_one_is_a_value_error(name: object) -> None:
    from pytest_kts.protocol import check_tenant_name

    with pytest.raises(ValueError, match=r"tenant name .* is not allowed"):
        check_tenant_name(name)  # type: ignore[arg-type]
