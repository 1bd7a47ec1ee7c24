"""Peak training memory of the ODE block, backprop vs adjoint vs checkpoint (P2).

``measurement``: one point, in a fresh process; ``protocol``: P2 of ``neuralode reproduce``.
"""
