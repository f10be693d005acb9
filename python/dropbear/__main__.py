"""``python -m dropbear``: the ``dropbear`` command."""

import sys

from dropbear.cli import main

sys.exit(main())
