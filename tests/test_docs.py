"""Every code block in README.md and docs/*.md is tested (issue 12 item 8).

* Python blocks that define tests run through pytester on the CPU, shrunk to seconds (sizes,
  iterations; ``mps`` needs a GPU and is left out of ``run_modes``): a block that calls the
  API wrongly (``run_modes`` after ``run``) fails here.
* Other Python blocks (fragments) must compile.
* Shell blocks may name only options that exist: ``--kts-*`` of the plugin, the options of the
  ``kts`` subcommand they call, and scripts that are in the repository.
* YAML blocks must parse; a Kubernetes object among them (``apiVersion`` and ``kind``) must be
  valid for the newest Kubernetes supported, by the official schema in strict mode.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from pytest_kts import cli
from pytest_kts.config import OPTIONS

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(language: tuple[str, ...]) -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) in language:
                line = text[: match.start()].count("\n") + 1
                found.append((f"{path.relative_to(ROOT)}:{line}", match.group(2)))
    return found


PYTHON = blocks(("python", "py"))
SHELL = blocks(("bash", "sh", "shell", "console"))
YAML = blocks(("yaml", "yml"))
TESTS = [(where, code) for where, code in PYTHON if re.search(r"^def test_", code, re.M)]
FRAGMENTS = [(where, code) for where, code in PYTHON if (where, code) not in TESTS]

# Shrinks what a documentation example asks for to what two shared CPU cores run in seconds.
SHRINK = """
import pytest
from pytest_kts.fixture import Kts

_tenant, _run_modes = Kts.tenant, Kts.run_modes

def tenant(self, name, workload=None, **kw):
    kw["size"] = 16
    kw["sleep_ms"] = min(kw.get("sleep_ms") or 0.0, 0.5)
    params = dict(kw.get("params") or {})
    params.pop("graph", None)  # a CUDA graph needs CUDA
    if (workload or name) in ("decode", "prefill", "embed"):
        params.update(layers="1", vocab="256", max_seq="64", seq="8", batch="1")
        if (workload or name) == "decode":
            params.pop("seq", None), params.pop("batch", None)
        if (workload or name) == "embed":
            params.pop("vocab", None), params.pop("max_seq", None)
        if (workload or name) == "prefill":
            params.pop("max_seq", None)
    kw["params"] = params
    return _tenant(self, name, workload, **kw)

def run_modes(self, modes=("timeslice", "mps"), *args, **kw):
    return _run_modes(self, [m for m in modes if m != "mps"], *args, **kw)

Kts.tenant, Kts.run_modes = tenant, run_modes
"""


def test_the_docs_have_blocks_of_each_kind() -> None:
    assert len(TESTS) >= 3 and FRAGMENTS and SHELL


@pytest.mark.parametrize(("where", "code"), FRAGMENTS, ids=[w for w, _ in FRAGMENTS])
def test_python_fragments_compile(where: str, code: str) -> None:
    compile(code, where, "exec")


def test_python_test_blocks_run_on_the_cpu(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in list(os.environ):
        if key.startswith("KTS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("KTS_LOCK_DIR", str(tmp_path / "locks"))
    pytester.makeconftest(SHRINK)
    for k, (where, code) in enumerate(TESTS):
        header = f"# {where}\nimport pytest\nfrom pytest_kts import assert_df\n"
        pytester.makepyfile(**{f"test_doc_{k}": header + code})
    result = pytester.runpytest_subprocess(
        "--kts-device", "cpu", "--kts-iterations", "40", "--kts-round-iterations", "20",
        "--kts-max-iterations", "40", "-p", "no:cacheprovider",
        "-W", "ignore::pytest_kts.KtsInconclusiveWarning",
    )  # fmt: skip
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("error", 0) == 0, result.stdout.str()
    assert outcomes.get("passed", 0) == sum(
        len(re.findall(r"^def test_", c, re.M)) for _, c in TESTS
    )


def _kts_options() -> dict[str, set[str]]:
    parser = cli.build_parser()
    out: dict[str, set[str]] = {}
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for name, sub in action.choices.items():
            out[name] = {s for a in sub._actions for s in a.option_strings}
    return out


@pytest.mark.parametrize(("where", "code"), SHELL, ids=[w for w, _ in SHELL])
def test_shell_blocks_name_only_options_that_exist(where: str, code: str) -> None:
    plugin_flags = {o.cli for o in OPTIONS}
    kts = _kts_options()
    text = code.replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        if words[0] == "pytest" or words[:3] == ["python", "-m", "pytest"]:
            for word in words:
                flag = word.split("=", 1)[0]
                if flag.startswith("--kts"):
                    assert flag in plugin_flags, f"{where}: {flag} is no pytest-kts option"
        elif words[0] == "kts":
            assert words[1] in kts, f"{where}: no subcommand kts {words[1]}"
            for word in words[2:]:
                flag = word.split("=", 1)[0]
                if flag.startswith("-"):
                    assert flag in kts[words[1]], f"{where}: kts {words[1]} has no {flag}"
        elif words[0] == "bash" and words[1].startswith("scripts/"):
            assert (ROOT / words[1]).is_file(), f"{where}: no {words[1]}"


@pytest.mark.parametrize(("where", "code"), YAML, ids=[w for w, _ in YAML])
def test_yaml_blocks_parse_and_objects_are_valid(where: str, code: str) -> None:
    import yaml

    documents = [d for d in yaml.safe_load_all(code) if d is not None]
    assert documents, f"{where}: an empty YAML block"
    objects = [d for d in documents if isinstance(d, dict) and "apiVersion" in d and "kind" in d]
    if not objects:
        return
    validate = pytest.importorskip("kubernetes_validate")
    from pytest_kts.backends.kubernetes.gpu_request import SUPPORTED_KUBERNETES

    newest = max(v for versions in SUPPORTED_KUBERNETES.values() for v in versions)
    for doc in objects:
        validate.validate(doc, newest, strict=True)
