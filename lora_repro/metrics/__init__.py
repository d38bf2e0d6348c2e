"""Task metrics: GLUE classification/regression scores and the NLG scorers."""
