"""Data-parallel training: one process per rank, gradients all-reduced through MPI (CPU) or
NCCL (GPU). ``launch`` reads who we are from the launcher's environment, ``collectives``
moves the gradients, ``driver`` plugs both into a Solver (``Solver(..., parallel=...)``).
"""
