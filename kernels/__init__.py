"""Triton kernels, shipped as ``postemb_rt.kernels`` (needs the ``[gpu]`` extra: triton).

Import the op you need, e.g.
``from postemb_rt.kernels.masked_mean_pool_l2 import masked_mean_pool_l2``; this package
itself imports nothing, so ``import postemb_rt`` never pulls in triton.
"""
