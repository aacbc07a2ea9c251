"""The sharing environment recorded with every run (issue 21 item 4).

This machine has no GPU and no ``nvidia-smi``: the readers are driven by a fake ``nvidia-smi``
(and ``nvidia-cuda-mps-control``) on ``PATH`` that print what the real tools print, and by a
fake NVML module. What is asserted: the values land in the record, what cannot be read says
"unknown" with the reason, and a baseline compare across two environments says so and does
not gate.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from pytest_kts import baseline, machine, sharing_env
from pytest_kts.config import RunSettings
from pytest_kts.errors import RegressionError
from pytest_kts.session import KtsSession
from tests.test_baseline import make_result

POLICY_TABLE = """\
+---------------------------------------------+
| GPU compute policies:                       |
| GPU   Policy name              Value        |
|=============================================|
| 0     Timeslice                {policy}     |
+---------------------------------------------+
"""


def fake_tool(directory: Path, name: str, body: str) -> Path:
    """An executable ``name`` in ``directory`` running ``body`` (Python, args in ``argv``)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    code = "import sys\nargv = sys.argv[1:]\n" + textwrap.dedent(body)
    path.write_text(f"#!{sys.executable}\n{code}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def fake_smi(
    directory: Path,
    *,
    policy: str = "Default",
    compute: str = "Default",
    mig: str = "[N/A]",
    driver: str = "580.159.04",
    policy_takes_i: bool = True,
    log: Path | None = None,
) -> Path:
    return fake_tool(
        directory,
        "nvidia-smi",
        f"""
        if {str(log) if log else ""!r}:
            with open({str(log)!r}, "a") as f:
                f.write(" ".join(argv) + "\\n")
        if argv[:2] == ["compute-policy", "-l"]:
            if "-i" in argv and not {policy_takes_i!r}:
                print("Invalid combination of input arguments.", file=sys.stderr)
                sys.exit(2)
            print({POLICY_TABLE!r}.format(policy={policy!r}))
        elif argv and argv[0].startswith("--query-gpu="):
            print({f"{driver}, {compute}, {mig}"!r})
        else:
            sys.exit(9)
        """,
    )


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    sharing_env._smi.cache_clear()


def test_nvidia_smi_gives_time_slice_compute_and_mig_mode_and_driver(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    fake_smi(tmp_path / "bin", policy="Short", compute="Exclusive_Process", log=log)
    env = {"PATH": str(tmp_path / "bin")}
    record = sharing_env.read(env, device="cuda", gpu="GPU-1234")
    assert record["time_slice"] == "Short"
    assert record["compute_mode"] == "Exclusive_Process"
    assert record["mig_mode"] == "not supported"  # nvidia-smi's [N/A]
    assert record["driver"] == "580.159.04"
    assert "notes" not in record and "mps" not in record and "hami" not in record
    # It asked about this process's GPU, by UUID.
    calls = log.read_text().splitlines()
    assert all(c.endswith("-i GPU-1234") for c in calls) and len(calls) == 2


def test_a_compute_policy_without_dash_i_falls_back_to_the_listing(tmp_path: Path) -> None:
    fake_smi(tmp_path / "bin", policy="Long", policy_takes_i=False)
    record = sharing_env.read({"PATH": str(tmp_path / "bin")}, device="cuda", gpu="GPU-1")
    assert record["time_slice"] == "Long" and "notes" not in record


def test_no_nvidia_smi_says_unknown_and_why() -> None:
    record = sharing_env.read({"PATH": "/nonexistent"}, device="cuda", gpu="GPU-1")
    assert [record[k] for k in sharing_env.GPU_FIELDS] == ["unknown"] * 4
    assert record["notes"] == ["nvidia-smi not found on PATH"]
    json.dumps(record)  # it travels in KTS_META and summary.json


def test_on_the_cpu_the_gpu_fields_are_absent() -> None:
    record = sharing_env.read({"PATH": "/nonexistent"}, device="cpu")
    assert [record[k] for k in sharing_env.GPU_FIELDS] == [None] * 4
    assert "CPU cores" in record["notes"][0]
    combined = sharing_env.combine({"a": record, "b": record})
    assert sharing_env.describe(combined) == "no GPU"
    assert combined["notes"] == record["notes"]  # said by both: once


def test_a_failing_nvidia_smi_is_a_note_not_an_error(tmp_path: Path) -> None:
    failing = "print('NVML: Driver/library mismatch', file=sys.stderr); sys.exit(18)"
    fake_tool(tmp_path / "bin", "nvidia-smi", failing)
    record = sharing_env.read({"PATH": str(tmp_path / "bin")}, device="cuda", gpu="GPU-1")
    assert record["time_slice"] == record["compute_mode"] == "unknown"
    assert any("exit 18: NVML: Driver/library mismatch" in n for n in record["notes"])


def test_nvml_gives_compute_and_mig_mode_when_the_caller_has_it(tmp_path: Path) -> None:
    fake_smi(tmp_path / "bin", policy="Medium", compute="Default", mig="Disabled")

    def nvml(gpu: str | None) -> dict[str, str]:
        assert gpu == "GPU-1"
        return {"compute_mode": "Prohibited", "mig_mode": "Enabled"}

    env = {"PATH": str(tmp_path / "bin")}
    record = sharing_env.read(env, device="cuda", gpu="GPU-1", nvml=nvml)
    assert (record["compute_mode"], record["mig_mode"]) == ("Prohibited", "Enabled")
    assert (record["time_slice"], record["driver"]) == ("Medium", "580.159.04")  # nvidia-smi's

    def broken(gpu: str | None) -> dict[str, str]:
        raise RuntimeError("NVML Shared Library Not Found")

    record = sharing_env.read(env, device="cuda", gpu="GPU-1", nvml=broken)
    assert record["compute_mode"] == "Default"  # nvidia-smi answered instead
    assert record["notes"] == ["NVML: NVML Shared Library Not Found"]


def test_machine_reads_compute_and_mig_mode_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class NVMLError(Exception):
        pass

    def no_mig(handle: object) -> None:
        raise NVMLError("Not Supported")

    fake = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetHandleByUUID=lambda uuid: ("handle", uuid),
        nvmlDeviceGetHandleByIndex=lambda i: ("handle", i),
        nvmlSystemGetDriverVersion=lambda: b"580.159.04",
        nvmlDeviceGetComputeMode=lambda handle: 3,
        nvmlDeviceGetMigMode=no_mig,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    got = machine._nvml_sharing("GPU-9")
    assert got == {"driver": "580.159.04", "compute_mode": "Exclusive_Process",
                   "mig_mode": "not supported"}  # fmt: skip
    assert calls == ["init", "shutdown"]
    fake.nvmlDeviceGetMigMode = lambda handle: (1, 1)
    assert machine._nvml_sharing(None)["mig_mode"] == "Enabled"


def test_mps_and_hami_settings_come_from_the_environment(tmp_path: Path) -> None:
    pipe = tmp_path / "mps-pipe"
    pipe.mkdir()
    fake_tool(
        tmp_path / "bin",
        "nvidia-cuda-mps-control",
        """
        asked = sys.stdin.read().strip()
        print("40.0" if asked == "get_default_active_thread_percentage" else "bad")
        """,
    )
    env = {
        "PATH": str(tmp_path / "bin"),
        "CUDA_MPS_PIPE_DIRECTORY": str(pipe),
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=10G",
        "CUDA_DEVICE_SM_LIMIT": "30",
        "CUDA_DEVICE_MEMORY_LIMIT_0": "3000m",
        "GPU_CORE_UTILIZATION_POLICY": "force",
        "CUDA_VISIBLE_DEVICES": "0",  # not a sharing setting
    }
    record = sharing_env.read(env, device="cpu")
    assert record["mps"] == {
        "active_thread_percentage": "50",
        "pinned_memory_limit": "0=10G",
        "pipe_directory": str(pipe),
        "daemon_default_active_thread_percentage": "40.0",
    }
    assert record["hami"] == {
        "CUDA_DEVICE_MEMORY_LIMIT_0": "3000m",
        "CUDA_DEVICE_SM_LIMIT": "30",
        "GPU_CORE_UTILIZATION_POLICY": "force",
    }


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("Timeslice Default", "Default"),
        (POLICY_TABLE.format(policy="Short"), "Short"),
        ("GPU 00000000:18:00.0\n    Timeslice : Long\n", "Long"),
        ("Compute policy: none set", None),
    ],
)
def test_the_time_slice_parser(text: str, policy: str | None) -> None:
    assert sharing_env.parse_time_slice(text) == policy


def test_an_unparsed_policy_listing_is_kept_for_a_person_to_read(tmp_path: Path) -> None:
    answer = "print('Nothing to list' if argv[0] == 'compute-policy' else '1, Default, Disabled')"
    fake_tool(tmp_path / "bin", "nvidia-smi", answer)
    record = sharing_env.read({"PATH": str(tmp_path / "bin")}, device="cuda", gpu="GPU-1")
    assert record["time_slice"] == "unknown" and record["mig_mode"] == "Disabled"
    assert record["notes"] == ["nvidia-smi compute-policy -l printed 'Nothing to list'"]


# -- a scenario's record -------------------------------------------------------------------------

GPU = {"time_slice": "Default", "compute_mode": "Default", "mig_mode": "Disabled", "driver": "580"}


def test_combine_takes_the_tenants_gpu_fields_and_keeps_per_process_settings() -> None:
    record = sharing_env.combine(
        {
            "fft": {**GPU, "mps": {"active_thread_percentage": "50", "pipe_directory": "/p"}},
            "gemm": dict(GPU),
        }
    )
    assert {k: record[k] for k in sharing_env.GPU_FIELDS} == GPU
    assert record["tenants"] == {
        "fft": {"mps": {"active_thread_percentage": "50", "pipe_directory": "/p"}}
    }
    assert record["source"] == "workers" and "notes" not in record
    line = sharing_env.describe(record)
    assert line == (
        "time slice Default, compute mode Default, MIG Disabled, driver 580; "
        "fft: MPS active_thread_percentage=50"
    )


def test_combine_says_mixed_fills_from_the_host_and_names_the_silent() -> None:
    record = sharing_env.combine(
        {
            "a": {**GPU, "time_slice": "unknown", "compute_mode": "Default"},
            "b": {**GPU, "time_slice": "unknown", "compute_mode": "Prohibited"},
            "c": None,  # an older worker image: no record
        },
        host={**GPU, "time_slice": "Short"},
    )
    assert record["compute_mode"] == "mixed: a=Default, b=Prohibited"
    assert record["time_slice"] == "Short"
    assert "time slice read on the runner's host" in record["notes"]
    assert any("not reported by c" in n for n in record["notes"])
    assert sharing_env.combine({"a": None})["time_slice"] == "unknown"


def test_differences_only_where_both_sides_know() -> None:
    now = {**GPU, "time_slice": "Short"}
    assert sharing_env.differences(now, GPU) == ["time slice Default -> Short"]
    assert sharing_env.differences({**GPU, "driver": "unknown"}, GPU) == []
    assert sharing_env.differences(GPU, {}) == []  # a baseline from before the record
    with_mps = {**GPU, "tenants": {"a": {"mps": {"active_thread_percentage": "30"}}}}
    assert sharing_env.differences(with_mps, GPU) == ["a MPS active_thread_percentage unset -> 30"]
    moved_pipe = {**GPU, "tenants": {"a": {"mps": {"pipe_directory": "/elsewhere"}}}}
    assert sharing_env.differences(moved_pipe, GPU) == []  # a path, not a setting


# -- into the report and the baselines ----------------------------------------------------------


def _with_env(result: Any, **gpu: str) -> Any:
    for tenant in result.tenants.values():
        tenant.meta["sharing_env"] = {**GPU, **gpu}
    return result


def test_a_compare_across_sharing_environments_says_so_and_does_not_gate(tmp_path: Path) -> None:
    settings = RunSettings(device="cpu", baseline_dir=str(tmp_path), save="main")
    session = KtsSession(settings, "cpu")
    before = _with_env(make_result(1), time_slice="Default")
    session._baselines(before, settings, before.name)
    assert baseline.load_baseline(tmp_path, "main", before.name).sharing_env["time_slice"] == (
        "Default"
    )
    compare = RunSettings(device="cpu", baseline_dir=str(tmp_path), compare="main")
    slower = _with_env(make_result(2, shared_scale=1.6), time_slice="Long")
    session._baselines(slower, compare, before.name)  # a 1.6x regression, but on another time slice
    line = [w for w in slower.warnings if "sharing environment" in w]
    assert line == [
        "baseline sharing environment differs (time slice Default -> Long): the comparison is "
        "reported, not gated"
    ]
    assert slower.comparisons and all(c["gated"] is False for c in slower.comparisons)
    assert any(c["verdict"] == "fail" for c in slower.comparisons)  # still reported as it is
    # The same regression on the same setting fails the test.
    same = _with_env(make_result(3, shared_scale=1.6), time_slice="Default")
    with pytest.raises(RegressionError):
        session._baselines(same, compare, before.name)


def test_summary_json_and_results_md_carry_the_record(tmp_path: Path) -> None:
    from pytest_kts.report import render_markdown, scenario_dict

    result = _with_env(make_result(1), time_slice="Short")
    assert scenario_dict(result)["sharing_env"]["time_slice"] == "Short"
    text = render_markdown([result], command="pytest")
    assert "Sharing environment: time slice Short, compute mode Default, MIG Disabled" in text


def test_a_cpu_run_records_its_environment_end_to_end(pytester: pytest.Pytester) -> None:
    """The whole path on this machine: worker KTS_META -> summary.json and results.md."""
    pytester.makepyfile(
        """
        def test_two(kts):
            kts.tenant("fft", size=16, sleep_ms=0.5)
            kts.tenant("matmul", size=16, sleep_ms=0.5)
            kts.run()
        """
    )
    env_before = dict(os.environ)
    result = pytester.runpytest_subprocess(
        "--kts-device", "cpu", "--kts-iterations", "20", "--kts-round-iterations", "20",
        "--kts-report", "out", "-p", "no:cacheprovider",
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    summary = json.loads((pytester.path / "out" / "summary.json").read_text())
    record = summary["scenarios"][0]["sharing_env"]
    assert record["source"] == "workers" and record["time_slice"] is None
    assert any("CPU cores" in n for n in record["notes"])
    assert "Sharing environment: no GPU." in (pytester.path / "out" / "results.md").read_text()
    assert dict(os.environ) == env_before
