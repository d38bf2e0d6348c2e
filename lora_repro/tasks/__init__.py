"""Task families: how a run gets its batches, evaluates an epoch, and finishes (GLUE, NLG)."""
