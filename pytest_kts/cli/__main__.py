"""``python -m pytest_kts.cli``: the ``kts`` command."""

import sys

from pytest_kts.cli import main

sys.exit(main())
