"""Graph compile: a filtered NetParameter becomes an execution plan that owns all memory.

``compile`` runs Caffe's passes in order; ``memory_plan`` shares buffers by liveness."""
