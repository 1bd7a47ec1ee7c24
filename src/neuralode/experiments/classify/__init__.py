"""Image classification: the paper's Table 1 (P1) and Figure 3 (P3).

``task``: ``neuralode train classify``; ``evaluate``: ``neuralode evaluate classify``;
``protocol``: P1 and P3 of ``neuralode reproduce``, judged by ``verdicts``.
"""
