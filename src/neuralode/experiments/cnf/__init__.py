"""Continuous vs planar normalizing flows: the paper's Figs. 4 and 5 (P5).

``task``: ``neuralode train cnf``; ``plots``: its figures; ``protocol``: P5 of
``neuralode reproduce``, with its sizes in ``scales`` and its acceptance in ``verdicts``.
"""
