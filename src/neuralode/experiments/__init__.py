"""The ``neuralode`` command: typed experiment configs, one training loop, plots, reports.

Unlike the rest of the package this layer needs the ``cli`` extra (tyro, tqdm,
matplotlib); importing :mod:`neuralode` never imports it, and importing this package
without the extra fails at once with the command that installs it.
"""

from ._run.extras import require

require("tyro")
