"""``python -m flowmatch`` runs the ``flowmatch`` command line."""

import sys

from flowmatch.cli import main

sys.exit(main())
