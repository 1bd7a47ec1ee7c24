"""What every experiment shares: one training loop, run folders, DDP, progress, plots, files.

An experiment's folder holds only what is its own (config, task, evaluation, plots,
protocol); everything else it takes from here.
"""
