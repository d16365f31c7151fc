"""``python -m eqkern …``: see :mod:`eqkern.cli`."""

import sys

from .cli import main

sys.exit(main())
