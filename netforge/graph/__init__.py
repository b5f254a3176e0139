"""Graph compile: a NetParameter becomes an execution plan that owns all memory.

``compile`` runs the named passes in order (``splits``, ``instantiate``, ``wiring``,
``params``, ``shapes``, ``backward``) into a ``plan.Plan``; ``memory_plan`` shares buffers by
liveness and the scratch that layers declare."""
