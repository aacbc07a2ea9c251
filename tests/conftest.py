from __future__ import annotations

import os
import sys
from pathlib import Path

pytest_plugins = ["pytester"]

HERE = Path(__file__).resolve().parent
# Workers import the misbehaving test workloads as ``kts_test_workloads:NAME``.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# pytester's subprocesses (runpytest_subprocess) must import this checkout's pytest_kts, not
# whatever copy is installed in the environment (an editable install of another tree).
ROOT = HERE.parent
_paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
if str(ROOT) not in _paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, _paths)])
