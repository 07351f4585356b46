"""``python -m operations``: the ``snh`` command, where the console script is not on PATH
(the hub's own services run it with the hub's interpreter)."""

import sys

from .cli import main

sys.exit(main())
