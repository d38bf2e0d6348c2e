"""Task data: reading the staged files (or the hub), tokenising once with a cache, and batching.

Every task family has one module here (``glue`` for the GLUE classification/regression tasks);
the training loop only sees an encoded split and a DataLoader, never the file formats.
"""
