from __future__ import annotations

import sys
from pathlib import Path

pytest_plugins = ["pytester"]

HERE = Path(__file__).resolve().parent
# Workers import the misbehaving test workloads as ``kts_test_workloads:NAME``.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
