"""The suite-vs-PEFT race's pieces, on the tiny BERT and a few SST-2-shaped rows (no timed assertions)."""

import dataclasses

import pytest
import torch

from lora_repro.bench import peer, peer_jobs, steps
from lora_repro.config import group_option
from lora_repro.report import bench_peer as report

SENTENCES = ["a fine film", "dull and long , with nothing to say about anything at all", "great",
             "the cast is wonderful and the script is sharp", "bad", "not worth the ticket price"]
# LoRA on q, v of 2 blocks (r=4, d=32) + BERT pooler + classifier.
TINY_TRAINABLE = 2 * 2 * 4 * (32 + 32) + (32 * 32 + 32) + (32 * 2 + 2)


@pytest.fixture
def tiny_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_REPRO_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    for split, count in (("train", 48), ("dev", 12)):
        lines = ["sentence\tlabel"] + [f"{SENTENCES[i % 6]} {i}\t{i % 2}" for i in range(count)]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    spec = peer_jobs.JobSpec(steps=4, skip=1, batch_size=8, max_length=16, train_subset=32, threads=1, r=4,
                             alpha=4, infer_batch_size=4, infer_passes=1, model_cfg=group_option("model", "tiny_bert"),
                             data={"data_root": str(tmp_path)})
    return dataclasses.replace(spec, batches_path=str(peer_jobs.build_shared_batches(spec, tmp_path / "b.pt")))


def test_step_stats_drop_warmup_and_count_samples():
    stats = steps.step_stats([0.0, 1.0, 1.5, 2.0, 2.6], [8, 8, 8, 4], skip=1, cpu=[0.0, 2.0, 3.0, 4.0, 5.0])
    assert stats["steps_timed"] == 3 and stats["step_s"] == pytest.approx([0.5, 0.5, 0.6])
    assert stats["step_s_mean"] == pytest.approx(1.6 / 3) and stats["step_s_median"] == pytest.approx(0.5)
    assert stats["samples_per_s"] == pytest.approx((8 + 8 + 4) / 1.6)
    assert stats["cpu_step_s"] == pytest.approx([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="no steps left"):
        steps.step_stats([0.0, 1.0], [8], skip=1)


def test_step_clock_stamps_each_boundary_and_fingerprints_batches():
    batches = [{"input_ids": torch.zeros(2, 3, dtype=torch.long)}, {"input_ids": torch.ones(4, 5, dtype=torch.long)}]
    clock = steps.StepClock()
    assert len(list(clock.around(batches))) == 2
    assert clock.sizes == [2, 4] and clock.padded_tokens == [6, 20] and len(clock.wall) == len(clock.cpu) == 3
    assert clock.digests[0] != clock.digests[1]
    assert clock.digests[0] == steps.batch_digest({"input_ids": torch.zeros(2, 3, dtype=torch.long)})
    assert clock.digests[0] != steps.batch_digest({"input_ids": torch.zeros(3, 2, dtype=torch.long)})


def test_equal_setting_feeds_both_sides_the_identical_batches(tiny_spec):
    shared = [steps.batch_digest(b) for b in torch.load(tiny_spec.batches_path)]
    assert len(shared) == tiny_spec.steps
    ours, theirs = peer.run_job("ours_equal", tiny_spec), peer.run_job("peft_equal", tiny_spec)
    assert ours["batch_digests"] == theirs["batch_digests"] == shared
    assert ours["trainable_params"] == theirs["trainable_params"] == TINY_TRAINABLE
    assert ours["precision"] == theirs["precision"] == "fp32"
    assert ours["attention"] == theirs["attention"] == "sdpa"  # transformers' default on both sides
    assert "fused=True" in ours["optimizer"] and "adamw_torch_fused" in theirs["optimizer"].lower()
    for result in (ours, theirs):
        assert result["steps_timed"] == len(result["step_s"]) == len(result["cpu_step_s"]) == tiny_spec.steps - 1
        assert 0 < result["rss_after_imports_bytes"] <= result["peak_rss_bytes"]
        assert result["env"]["cpu_count"] and result["env"]["versions"]["torch"]


def test_default_setting_uses_each_frameworks_own_batches(tiny_spec):
    ours = peer.run_job("ours_default", tiny_spec)
    shared = [steps.batch_digest(b) for b in torch.load(tiny_spec.batches_path)]
    assert ours["batch_digests"] != shared  # the suite's length-grouped loader, not the shared batches
    assert ours["precision"] == "fp32" and not ours["compiled"]


def test_best_setting_runs_both_sides_on_eager_attention_in_bf16(tiny_spec):
    for job in ("ours_best", "peft_best"):
        result = peer.run_job(job, tiny_spec)
        assert (result["attention"], result["precision"]) == ("eager", "bf16"), job


def test_unknown_job_names_the_choices(tiny_spec):
    with pytest.raises(ValueError, match=r"unknown job 'ours_fast'.*ours_equal"):
        peer.run_job("ours_fast", tiny_spec)


def test_equal_setting_without_shared_batches_says_so(tiny_spec):
    with pytest.raises(ValueError, match="batches_path"):
        peer.run_job("ours_equal", dataclasses.replace(tiny_spec, batches_path=None))


def test_infer_job_compares_merged_and_base(tiny_spec):
    result = peer.run_job("infer", tiny_spec)
    assert result["merged_same_graph_as_base"] and result["merged_matches_unmerged"]
    assert set(result["ratio_total"]) == {"merged", "unmerged"} and result["batches_timed"] == 3
    low, high = result["ratio_paired_interval"]["merged"]
    assert low <= result["ratio_paired_median"]["merged"] <= high


@pytest.mark.slow
def test_job_runs_in_a_fresh_process(tiny_spec):
    result = peer.run_in_subprocess("ours_default", tiny_spec, timeout=300)
    assert result["job"] == "ours_default" and result["env"]["threads"] == 1


def _result(job, round_index, step_s, cpu_s, digests, imports_mib=400, peak_mib=900):
    side, _, setting = job.partition("_")
    return {"job": job, "side": side, "setting": setting, "round": round_index, "step_s": step_s,
            "step_s_mean": sum(step_s) / len(step_s), "cpu_step_s": cpu_s, "cpu_step_s_mean": sum(cpu_s) / len(cpu_s),
            "batch_digests": digests, "padded_tokens_per_step": 300, "precision": "fp32", "optimizer": "AdamW",
            "compiled": False, "trainable_params": 100, "rss_after_imports_bytes": imports_mib * 2**20,
            "peak_rss_bytes": peak_mib * 2**20, "job_wall_s": 10.0,
            "env": {"cpu": "Test CPU 9000", "cpu_count": 64, "machine": "riscv64", "threads": 2,
                    "versions": {"torch": "9.9"}}}


def _raw(ours_equal_s=0.08, same=True):
    results = []
    for i in range(3):
        results += [_result("ours_equal", i, [ours_equal_s, 2 * ours_equal_s], [0.16, 0.32], ["a", "b"], 380, 800),
                    _result("peft_equal", i, [0.1, 0.2], [0.2, 0.4], ["a", "b"] if same else ["c", "d"], 480, 1000),
                    _result("ours_default", i, [0.05, 0.05], [0.1, 0.1], ["x", "y"]),
                    _result("peft_default", i, [0.1, 0.1], [0.2, 0.2], ["z", "w"])]
    return {"spec": dataclasses.asdict(peer_jobs.JobSpec()), "results": results, "infer": None, "profiles": {},
            "wall_s": 120.0, "loads": None}


def test_like_for_like_is_paired_step_by_step_on_identical_batches():
    rows = {row["setting"]: row for row in report.summarise(_raw())}
    equal = rows["equal"]
    assert equal["same_batches"] and equal["paired_unit"] == "steps" and equal["paired"].n == 6
    assert equal["step_ratio"] == pytest.approx(0.8) and equal["paired"].median == pytest.approx(0.8)
    assert equal["cpu_ratio"] == pytest.approx(0.8) and equal["memory_ratio"] == pytest.approx(0.8)
    assert equal["ours"]["imports_mib"] == pytest.approx(380) and equal["ours"]["added_mib"] == pytest.approx(420)
    default = rows["default"]
    assert not default["same_batches"] and default["paired_unit"] == "rounds" and default["paired"].n == 3
    assert default["step_ratio"] == pytest.approx(0.5)


def test_markdown_leads_with_like_for_like_and_describes_the_runs_hardware():
    text = report.to_markdown(_raw(), "python -m experiments.bench_peer --rounds 3")
    rows = [line for line in text.splitlines() if line.startswith("| like for like") or line.startswith("| as users")]
    assert rows[0].startswith("| like for like") and rows[1].startswith("| as users run them")
    assert "**0.800**" in rows[0] and "0.8000 [0.8000, 0.8000] (median of 6 paired steps)" in rows[0]
    assert "Test CPU 9000, 64 logical CPUs, riscv64" in text  # the jobs' hardware, not this machine's
    assert "samples/s, 1107 MiB" not in text and "Calibration" not in text
    assert "| like-for-like step-time ratio <= 0.90 | 0.800" in text and text.count("| met |") == 2
    assert "Warning" not in text


def test_markdown_flags_a_like_for_like_row_that_saw_different_batches():
    text = report.to_markdown(_raw(ours_equal_s=0.1, same=False), "cmd")
    assert "did not see identical batches" in text and "| NOT met |" in text


def test_race_rotates_jobs_and_shares_enough_batches_for_every_job(tiny_spec, tmp_path, monkeypatch):
    calls = []

    def fake_job(kind, spec, timeout=0):
        if kind != "infer" and kind.endswith("_equal"):  # the shared file must cover every step the job takes
            assert len(torch.load(spec.batches_path)) >= spec.steps
        calls.append((kind, spec.steps, spec.profile_steps))
        return {"job": kind, "step_s_mean": 0.1, "cpu_step_s_mean": 0.2, "peak_rss_bytes": 1, "profile": [],
                "profile_s": 0.0}

    monkeypatch.setattr(peer, "run_in_subprocess", fake_job)
    spec = dataclasses.replace(tiny_spec, steps=3, batches_path=None)  # a profiled job takes 1 + 1 + 2 = 4 steps
    raw = peer.race(spec, rounds=2, settings=("equal", "default"), batches_path=tmp_path / "shared.pt",
                    infer=False, profile_steps=1)
    jobs = [kind for kind, _, _ in calls]
    assert jobs[:4] == ["ours_equal", "peft_equal", "ours_default", "peft_default"]
    assert jobs[4:8] == ["peft_equal", "ours_default", "peft_default", "ours_equal"]  # round 1 starts one later
    assert calls[8:] == [("ours_equal", spec.skip + 1 + 2, 1), ("peft_equal", spec.skip + 1 + 2, 1)]
    assert [r["round"] for r in raw["results"]] == [0] * 4 + [1] * 4 and set(raw["profiles"]) == {"ours", "peft"}
