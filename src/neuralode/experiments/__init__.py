"""The ``neuralode`` command: typed experiment configs, one training loop, plots, reports.

Unlike the rest of the package this layer needs the ``cli`` extra (tyro, tqdm,
matplotlib); importing :mod:`neuralode` never imports it, and importing this package
without the extra fails at once with the command that installs it.

One folder per experiment (``classify``, ``latent``, ``cnf``, ``memory``) holds what is
its own: its config and task, evaluation, plots and protocols of ``neuralode reproduce``.
``_run`` holds what they share (the training loop, run folders, DDP, plots, files).
:mod:`.registry` lists them once; the command line and ``reproduce`` are built from it, so
adding an experiment is its folder and one entry there.
"""

from ._run.extras import require

require("tyro")
