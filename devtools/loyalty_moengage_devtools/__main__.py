"""``python -m loyalty_moengage_devtools <command>``: the development commands (see :mod:`loyalty_moengage_devtools.cli`)."""

import sys

from loyalty_moengage_devtools.cli import main

sys.exit(main())
