"""Reports: the results store and the paper's numbers turned into tables and figures."""
