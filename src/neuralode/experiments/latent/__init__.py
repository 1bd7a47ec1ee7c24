"""Latent ODE vs RNNs on irregularly sampled spirals: the paper's Table 2 (P4).

``task``: ``neuralode train latent-ode``; ``plots``: its figure; ``protocol``: P4 of
``neuralode reproduce``.
"""
