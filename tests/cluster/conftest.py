"""The real-cluster suite: ``pytest --kts-cluster tests/cluster`` (KUBECONFIG or --kts-kubeconfig).

Without ``--kts-cluster`` every test here is skipped with one line saying how to run it. The
``--kts-*`` options are the plugin's; where the plugin is not loaded they are added here, so
the suite also runs with ``-p no:kts``. ``KTS_DEVICE`` (cuda, auto or cpu; default cuda) picks
the tenants' device, ``KTS_NODE`` a node when --kts-node is not given.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--kts-cluster", {"action": "store_true", "help": "run tenants as Kubernetes Jobs"}),
    ("--kts-namespace", {"default": None}),
    ("--kts-image", {"default": None}),
    ("--kts-node", {"default": None}),
    ("--kts-runtime-class", {"default": None}),
    ("--kts-timeout", {"default": None, "type": float}),
    ("--kts-keep-jobs", {"action": "store_true"}),
    ("--kts-kubeconfig", {"default": None}),
    ("--kts-context", {"default": None}),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kts-cluster-suite")
    for name, kwargs in OPTIONS:
        try:
            group.addoption(name, **kwargs)
        except ValueError:  # the plugin defines it already
            pass


def _option(config: pytest.Config, name: str) -> Any:
    try:
        return config.getoption(name)
    except ValueError:
        return None


def _plugin_settings(config: pytest.Config) -> Any:
    """The plugin's resolved settings (command line > KTS_* > ini), when the plugin is loaded."""
    try:
        from pytest_kts.plugin import settings_key
    except ImportError:
        return None
    return config.stash.get(settings_key, None)


@pytest.fixture(scope="session", autouse=True)
def _needs_a_cluster(pytestconfig: pytest.Config) -> None:
    run = _plugin_settings(pytestconfig)
    wanted = run.cluster if run is not None else _option(pytestconfig, "--kts-cluster")
    if not wanted:
        pytest.skip("real-cluster suite: run it with `pytest --kts-cluster tests/cluster`")


@pytest.fixture(scope="session")
def cluster_settings(pytestconfig: pytest.Config, _needs_a_cluster: None) -> Any:
    kb = pytest.importorskip("pytest_kts.backends.kubernetes")
    pytest.importorskip("kubernetes")
    run = _plugin_settings(pytestconfig)
    if run is not None:
        settings = kb.cluster_settings(run)
        if settings.node is None and os.environ.get("KTS_NODE"):
            settings = dataclasses.replace(settings, node=os.environ["KTS_NODE"])
        return settings  # the plugin checked that the cluster answers
    values: dict[str, Any] = {}
    for option, field in (
        ("--kts-namespace", "namespace"),
        ("--kts-image", "image"),
        ("--kts-node", "node"),
        ("--kts-runtime-class", "runtime_class"),
        ("--kts-timeout", "timeout_s"),
        ("--kts-kubeconfig", "kubeconfig"),
        ("--kts-context", "context"),
    ):
        value = _option(pytestconfig, option)
        if value not in (None, ""):
            values[field] = float(value) if field == "timeout_s" else value
    if "node" not in values and os.environ.get("KTS_NODE"):
        values["node"] = os.environ["KTS_NODE"]
    values["keep_jobs"] = bool(_option(pytestconfig, "--kts-keep-jobs"))
    settings = kb.ClusterSettings(**values)
    try:
        kb.check_reachable(settings)
    except kb.ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)
    return settings


@pytest.fixture(scope="session")
def cluster_device() -> str:
    device = os.environ.get("KTS_DEVICE", "cuda")
    if device not in ("cuda", "auto", "cpu"):
        pytest.fail(f"KTS_DEVICE must be cuda, auto or cpu, got {device!r}", pytrace=False)
    return device
