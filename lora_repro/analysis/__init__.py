"""The paper's analysis of the low-rank update (Sec. 7): subspace similarity, ΔW against W, sweep reports."""
