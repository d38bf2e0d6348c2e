"""The suite-vs-PEFT benchmark's pieces, on the tiny BERT and a few SST-2-shaped rows."""

import pytest

from lora_repro.bench import peer
from lora_repro.config import group_option
from lora_repro.report import bench_peer as report

SENTENCES = ["a fine film", "dull and long , with nothing to say about anything at all", "great",
             "the cast is wonderful and the script is sharp", "bad", "not worth the ticket price"]


@pytest.fixture
def tiny_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_REPRO_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    for split, count in (("train", 48), ("dev", 12)):
        lines = ["sentence\tlabel"] + [f"{SENTENCES[i % 6]} {i}\t{i % 2}" for i in range(count)]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return peer.JobSpec(steps=4, skip=1, batch_size=8, max_length=16, train_subset=32, threads=1, r=4, alpha=4,
                        infer_batch_size=4, infer_passes=1, model_cfg=group_option("model", "tiny_bert"),
                        data={"data_root": str(tmp_path)})


def test_step_stats_drop_warmup_and_count_samples():
    stamps = [0.0, 1.0, 1.5, 2.0, 2.6]
    stats = peer.step_stats(stamps, [8, 8, 8, 4], skip=1)
    assert stats["steps_timed"] == 3
    assert stats["step_s_median"] == pytest.approx(0.5)
    assert stats["samples_per_s"] == pytest.approx((8 + 8 + 4) / 1.6)
    with pytest.raises(ValueError, match="no steps left"):
        peer.step_stats([0.0, 1.0], [8], skip=1)


def test_step_clock_stamps_each_batch():
    import torch

    clock = peer.StepClock([{"input_ids": torch.zeros(2, 3)}, {"input_ids": torch.zeros(4, 5)}])
    assert len(list(clock)) == 2 == len(clock)
    assert clock.sizes == [2, 4] and clock.padded_tokens == [6, 20] and len(clock.stamps) == 3


def test_ours_job_trains_with_the_suite_loop(tiny_spec):
    result = peer.run_job("ours", tiny_spec)
    assert result["job"] == "ours" and result["steps_timed"] >= 1
    assert result["step_s_median"] > 0 and result["samples_per_s"] > 0
    assert result["peak_rss_bytes"] > 0 and result["train_peak_rss_bytes"] > 0
    # LoRA on q, v of 2 blocks (r=4, d=32) + BERT pooler + classifier.
    assert result["trainable_params"] == 2 * 2 * 4 * (32 + 32) + (32 * 32 + 32) + (32 * 2 + 2)


def test_infer_job_compares_merged_and_base(tiny_spec):
    result = peer.run_job("infer", tiny_spec)
    assert result["merged_same_graph_as_base"] and result["merged_matches_unmerged"]
    assert set(result["ratio_total"]) == {"merged", "unmerged"} and result["ratio_total"]["merged"] > 0
    assert result["batches_timed"] == 3
    low, high = result["ratio_paired_interval"]["merged"]
    assert low <= result["ratio_paired_median"]["merged"] <= high


@pytest.mark.slow
def test_peft_job_trains_the_same_parameters(tiny_spec):
    result = peer.run_job("peft", tiny_spec)
    assert result["trainable_params"] == 2 * 2 * 4 * (32 + 32) + (32 * 32 + 32) + (32 * 2 + 2)
    assert result["steps_timed"] == tiny_spec.steps - tiny_spec.skip
    assert result["samples_per_s"] > 0 and result["peak_rss_bytes"] > 0


@pytest.mark.slow
def test_job_runs_in_a_fresh_process(tiny_spec):
    result = peer.run_in_subprocess("ours", tiny_spec, timeout=300)
    assert result["job"] == "ours" and result["threads"] == 1


def _result(job, round_index, step_s, rss_mib):
    return {"job": job, "round": round_index, "step_s_median": step_s, "samples_per_s": 16 / step_s,
            "peak_rss_bytes": rss_mib * 2**20, "train_peak_rss_bytes": rss_mib * 2**20, "padded_tokens_per_step": 300,
            "trainable_params": 100, "threads": 2, "job_wall_s": 10.0}


def test_summary_ratios_and_markdown():
    results = [_result("ours", i, 0.1, 900) for i in range(3)] + [_result("peft", i, 0.2, 1000) for i in range(3)]
    summary = report.summarise(results)
    assert summary["ours"]["step_ratio"] == pytest.approx(0.5)
    assert summary["ours"]["throughput_ratio"] == pytest.approx(2.0)
    assert summary["ours"]["memory_ratio"] == pytest.approx(0.9)
    infer = {"ratio_total": {"merged": 1.002, "unmerged": 1.05}, "ratio_paired_median": {"merged": 1.0, "unmerged": 1.05},
             "ratio_paired_interval": {"merged": [0.995, 1.004], "unmerged": [1.04, 1.06]},
             "ms_median": {"base": 1.0, "merged": 1.0, "unmerged": 1.05}, "ms_total": {"base": 10, "merged": 10, "unmerged": 11},
             "batches_timed": 10, "merged_same_graph_as_base": True, "merged_matches_unmerged": True}
    text = report.to_markdown(summary, results, infer, {}, peer.JobSpec(), "python -m experiments.bench_peer", 60.0)
    assert text.count("| met |") == 3
    assert "0.500" in text and "python -m experiments.bench_peer" in text
    assert "paired median 1.0000 [95 %: 0.9950, 1.0040]" in text
