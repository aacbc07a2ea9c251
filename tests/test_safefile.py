"""Files are written without following symlinks; the lock folder is the user's own."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pytest_kts import gpulock, safefile
from pytest_kts.report import write_report


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "outside" / "precious.txt"
    target.parent.mkdir()
    target.write_text("do not touch\n")
    return target


def test_a_symlinked_summary_json_does_not_overwrite_its_target(
    tmp_path: Path, outside: Path
) -> None:
    report = tmp_path / "report"
    report.mkdir()
    (report / "summary.json").symlink_to(outside)
    (report / "results.md").symlink_to(outside)
    written = write_report([], report, command="pytest")
    assert outside.read_text() == "do not touch\n"
    summary = report / "summary.json"
    assert summary in written and not summary.is_symlink()
    assert '"scenarios": []' in summary.read_text()
    assert not (report / "results.md").is_symlink()
    assert sorted(p.name for p in report.iterdir() if p.name.startswith(".")) == []  # no temp


def test_write_text_replaces_whole_and_leaves_no_temp_on_error(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    safefile.write_text(path, "one")
    safefile.write_text(path, "two")
    assert path.read_text() == "two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    with pytest.raises(RuntimeError), safefile.replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert path.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_gpulock_does_not_truncate_a_symlinks_target(
    tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    monkeypatch.setenv("KTS_LOCK_DIR", str(locks))
    (locks / "gpu-GPU-1.lock").symlink_to(outside)
    with pytest.raises(safefile.UnsafePathError, match="symlink"):
        gpulock.acquire(["GPU-1"], timeout_s=0)
    assert outside.read_text() == "do not touch\n"
    with gpulock.acquire(["GPU-2"], timeout_s=0) as lease:  # a plain lock still works
        assert lease.uuid == "GPU-2"
        assert (locks / "gpu-GPU-2.lock").read_text() == f"{os.getpid()}\n"


def test_the_default_lock_folder_is_per_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KTS_LOCK_DIR", raising=False)
    runtime = tmp_path / "run-user"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert gpulock.lock_dir() == runtime / "pytest-kts-locks"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    assert gpulock.lock_dir() == tmp_path / f"pytest-kts-locks-{os.getuid()}"
    with gpulock.acquire(["GPU-1"], timeout_s=0):
        pass
    assert stat.S_IMODE(os.lstat(gpulock.lock_dir()).st_mode) == 0o700


def test_a_lock_folder_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    monkeypatch.setenv("KTS_LOCK_DIR", str(locks))
    real_lstat = os.lstat

    def lstat(path: object) -> os.stat_result:
        info = real_lstat(path)  # type: ignore[arg-type]
        if Path(str(path)) == locks:
            fields = list(info)
            fields[stat.ST_UID] = os.getuid() + 1
            return os.stat_result(fields)
        return info

    monkeypatch.setattr(safefile.os, "lstat", lstat)
    with pytest.raises(safefile.UnsafePathError, match=f"belongs to uid {os.getuid() + 1}"):
        gpulock.acquire(["GPU-1"], timeout_s=0)
    assert list(locks.iterdir()) == []


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o1777])
def test_a_lock_folder_open_to_others_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    locks = tmp_path / "locks"
    locks.mkdir()
    locks.chmod(mode)
    monkeypatch.setenv("KTS_LOCK_DIR", str(locks))
    with pytest.raises(safefile.UnsafePathError, match="chmod 700"):
        gpulock.acquire(["GPU-1"], timeout_s=0)


def test_a_symlinked_lock_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "locks").symlink_to(real)
    monkeypatch.setenv("KTS_LOCK_DIR", str(tmp_path / "locks"))
    with pytest.raises(safefile.UnsafePathError, match="not a folder"):
        gpulock.acquire(["GPU-1"], timeout_s=0)
