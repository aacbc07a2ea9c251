"""Names the plugin and its workers share, each defined once.

This module imports nothing: the worker side (``pytest_kts.workers``), the backends, the
settings and the ``kts`` command all read their choices and codes from here.
"""

from __future__ import annotations

# What a backend starts: ``python -m WORKER_MODULE`` (a local process or a Job's container).
WORKER_MODULE = "pytest_kts.workers.run"
STREAMS_WORKER_MODULE = "pytest_kts.workers.streams"

PHASES = ("solo", "shared")
CLOCKS = ("host", "device")
DEVICES = ("auto", "cuda", "cpu")
ARRIVALS = ("closed", "constant", "poisson")
SHARING_MODES = ("timeslice", "mps", "streams")
# How a worker pod asks for its GPU on a cluster (backends/kubernetes/gpu_request.py).
GPU_REQUESTS = ("device-plugin", "dra", "hami", "kai")
DRA_SHARING = ("default", "timeslicing", "mps")  # default: no GpuConfig, the driver decides
DRA_INTERVALS = ("Default", "Short", "Medium", "Long")  # the DRA driver's TimeSliceInterval
INCONCLUSIVE_POLICIES = ("warn", "fail", "skip", "error")

# A worker's exit codes (anything else non-zero: the workload raised).
EXIT_USAGE = 2  # bad arguments or a bad workload / params
EXIT_OOM = 3  # the device ran out of memory
EXIT_NO_DEVICE = 4  # CUDA was asked for and there is none
