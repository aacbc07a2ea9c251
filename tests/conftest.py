from __future__ import annotations

import os
import signal
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

# A shell starts a background job (`cmd &`, `nohup cmd &` without job control) with SIGINT
# ignored, and every process it starts inherits that: Ctrl-C could then reach neither this
# session nor the parents and workers the interrupt tests start, and those tests would hang
# until their timeouts. They test what a user's Ctrl-C does, so Ctrl-C is delivered here as a
# terminal delivers it. (Only an inherited SIG_IGN is replaced; a handler someone set stays.)
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
