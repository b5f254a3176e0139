"""``netforge compress``: Deep Compression (prune → share → Huffman-coded .nfz) and DSD.

sharing.py: k-means weight sharing with centroid retraining · storage.py: the net → .nfz and
the size report · recipe.py: the stages (flags or a CompressionRecipe file) run on a solver ·
sensitivity.py: accuracy against sparsity per layer. Pruning masks live in train/pruning.py
(the solver owns them); the file format in netforge/nfz.py (weights.py reads it).
"""
