"""The house rule on module size: none over about 500 lines without a reason at its top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 500
# The phrase a long module's docstring uses to say why it stays one module.
REASON = "One file on purpose:"


def _modules() -> list[Path]:
    # workers/ is reached through pytest_kts/workers (a link): read each file once.
    found = {p.resolve() for p in (ROOT / "pytest_kts").rglob("*.py")}
    found |= {p.resolve() for p in (ROOT / "workers").rglob("*.py")}
    return sorted(found)


def test_the_walk_finds_the_package() -> None:
    names = {p.name for p in _modules()}
    assert {"runner.py", "stats.py", "harness.py"} <= names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_long_module_says_why_it_is_one_file(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if len(text.splitlines()) <= LIMIT:
        return
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert REASON in doc, (
        f"{path.relative_to(ROOT)} has {len(text.splitlines())} lines: split it along a seam, "
        f"or say at the top of its docstring why it stays one module ({REASON!r} ...)"
    )
