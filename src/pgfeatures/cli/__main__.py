"""``python -m pgfeatures.cli``: the same as the ``pgfeatures`` command."""

import sys

from .main import main

sys.exit(main())
