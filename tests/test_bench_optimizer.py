"""`make bench-optimizer` on a tiny model: both AdamW kernels step the same weights to the same values."""

import re

from experiments import bench_optimizer


def test_fused_and_for_loop_adamw_reach_the_same_weights(capsys):
    bench_optimizer.main(["--rounds", "3", "--threads", "1", "task=sst2", "model=tiny_bert", "method=full"])
    out = capsys.readouterr().out
    assert re.search(r"full: [\d,]+ trainable weights in \d+ tensors, 1 threads, 3 paired rounds", out)
    assert re.search(r"for-loop\s+median step", out) and re.search(r"fused\s+median step", out)
    pattern = r"fused / for-loop: ([\d.]+) \[([\d.]+), ([\d.]+)\]; largest weight difference after 4 steps: (\S+)"
    drift = re.search(pattern, out).group(4)
    assert float(drift) < 1e-6  # rounding only: each step moves a weight by up to lr = 5e-4
