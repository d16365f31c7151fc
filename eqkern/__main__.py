"""``python -m eqkern …``: see :mod:`eqkern.cli`."""

import sys

from eqkern.cli import main

sys.exit(main())
