from __future__ import annotations

import pytest

from pytest_kts.config import OPTIONS, RunSettings, resolve
from pytest_kts.errors import ConfigError


def test_defaults_match_the_dataclass() -> None:
    settings = resolve({}, {}, environ={})
    assert settings == RunSettings()
    for option in OPTIONS:
        assert getattr(settings, option.name) == option.default


def test_order_is_cli_then_environment_then_ini() -> None:
    ini = {"iterations": "100", "confidence": "0.9", "device": "cpu"}
    env = {"KTS_ITERATIONS": "200", "KTS_CONFIDENCE": "0.99"}
    cli = {"iterations": "300"}
    settings = resolve(cli, ini, environ=env)
    assert settings.iterations == 300  # command line wins
    assert settings.confidence == 0.99  # environment beats ini
    assert settings.device == "cpu"  # ini beats the default


def test_unset_flag_does_not_hide_the_environment() -> None:
    assert resolve({"keep_jobs": False}, {}, environ={"KTS_KEEP_JOBS": "yes"}).keep_jobs is True
    assert resolve({"keep_jobs": True}, {}, environ={}).keep_jobs is True


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("device", "tpu", "must be one of auto, cuda, cpu"),
        ("iterations", "0", "from 1 to 1000000"),
        ("iterations", "many", "from 1 to 1000000"),
        ("confidence", "1.0", r"\[0.5, 1\)"),
        ("inconclusive", "shrug", "warn, fail, skip, error"),
    ],
)
def test_bad_values_name_the_source(name: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        resolve({name: raw}, {}, environ={})
    assert f"--kts-{name}" in str(info.value)
    with pytest.raises(ConfigError) as info:
        resolve({}, {}, environ={f"KTS_{name.upper()}": raw})
    assert f"KTS_{name.upper()}" in str(info.value)


def test_marker_overrides_per_test_and_rejects_unknown_keys() -> None:
    base = resolve({"iterations": "300"}, {}, environ={})
    assert base.with_marker({"iterations": 50, "confidence": 0.9}).iterations == 50
    assert base.with_marker({}).iterations == 300
    with pytest.raises(ConfigError, match="unknown settings \\['iteration'\\]"):
        base.with_marker({"iteration": 5})
    with pytest.raises(ConfigError, match="the kts marker"):
        base.with_marker({"iterations": -1})
