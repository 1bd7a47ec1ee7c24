"""``python -m neuralode``: the command line (needs the ``cli`` extra)."""

import sys

from neuralode.experiments.cli import main

sys.exit(main())
