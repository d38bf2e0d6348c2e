"""`make bench-step` on tiny BERT: the paired race runs each comparison, and casting frozen weights once
computes exactly what autocast computes."""

import re

import pytest

from experiments import bench_step

TINY_RUN = ["+experiment=glue_smoke", "task=sst2", "method=lora", "train.precision=bf16"]


def _loss_difference(capsys, compare: str) -> float:
    """Race the two sides on 4 steps and return the largest loss difference printed."""
    bench_step.main(["--compare", compare, "--steps", "4", "--warmup", "1", "--threads", "1", *TINY_RUN])
    out = capsys.readouterr().out
    assert re.search(r"glue_smoke lora on sst2 \(bf16\): 1 threads, 4 paired steps after 1 warm-up steps", out)
    a, b = bench_step.COMPARISONS[compare]
    assert re.search(rf"{a}\s+median step", out) and re.search(rf"{b}\s+median step", out)
    drift = re.search(rf"{b} / {a}: [\d.]+ \[[\d.]+, [\d.]+\]; largest loss difference: (\S+)", out).group(1)
    return float(drift)


def test_frozen_weights_cast_once_trains_exactly_as_autocast(capsys):
    assert _loss_difference(capsys, "frozen-cast") == 0.0


def test_eager_attention_trains_the_same_function(capsys):
    assert _loss_difference(capsys, "attention") < 0.05  # bf16 rounding in another kernel order, same dropout


def test_frozen_cast_in_fp32_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_step.main(["--compare", "frozen-cast", "+experiment=glue_smoke", "train.precision=fp32"])
    assert exit_info.value.code == 2
    assert "needs autocast: add train.precision=bf16" in capsys.readouterr().err


def test_unknown_comparison_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_step.main(["--compare", "dropout"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'dropout'" in capsys.readouterr().err
