"""Kernels: plain functions over numpy or CuPy arrays (``ops/xp.py`` picks the module),
forward beside backward, one module per family. No layers, no protobuf: the bottom of the
import levels above errors/backend (see tests/test_layering.py), so ``import netforge.ops``
costs numpy alone."""
