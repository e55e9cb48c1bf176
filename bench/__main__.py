"""``python -m bench``: run the benchmarks (see :func:`bench.harness.main`).

Only parses arguments and hands over; must not import the reactor.
"""

import sys

from bench.harness import main

sys.exit(main())
