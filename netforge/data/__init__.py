"""Datasets: the Datum codec (``records``), LMDB and HDF5 stores, image lists, loaders,
the transformer, prefetch threads and worker processes, and ``convert`` (image folders to
a dataset). Feeds the data layers; imports only ops and the level-0 modules."""
