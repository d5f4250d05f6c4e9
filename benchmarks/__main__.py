"""``python -m benchmarks``: see :mod:`benchmarks`."""

import sys

from benchmarks.runner import main

sys.exit(main())
