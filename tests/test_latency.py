"""The latency harness (Table 1 / Figure 5) on the tiny GPT-2: structure, shared weights, merged graph."""

import pandas as pd
import pytest
import torch

from lora_repro.bench import checks, latency, stats, timing, variants
from lora_repro.config import group_option
from lora_repro.methods import lora
from lora_repro.report import latency as report

TINY = group_option("model", "tiny_gpt2")


def tiny_grid(**overrides) -> dict:
    grid = {**group_option("bench", "latency_smoke"), "batch_sizes": [1, 2], "seq_lengths": [8],
            "trials": 2, "warmup": 1, "table1_cells_measured": [[1, 8]]}
    grid.update(overrides)
    return grid


@pytest.fixture(scope="module")
def base():
    return variants.build_base(TINY, torch.device("cpu"), torch.float32, seed=0)


def test_variants_cover_the_paper_and_budget_bottlenecks():
    made = {v.name: v for v in variants.make_variants(tiny_grid(), TINY)}
    assert {"base", "lora_unmerged", "lora_merged", "adapter_h_b2", "adapter_l_b4"} <= set(made)
    # Only the budget that has a measured Table 1 cell gets variants, and only at that cell.
    assert "adapter_h_large" in made and "adapter_h_small" not in made
    assert made["adapter_h_large"].cells == ((1, 8),)
    assert made["adapter_h_large"].runs_at((1, 8)) and not made["adapter_h_large"].runs_at((2, 8))
    assert made["base"].runs_at((2, 8))


def test_bottleneck_for_budget_uses_the_paper_formula():
    # GPT-2 medium: 24 blocks, d = 1024. Adapter^H: 48 adapters, L(2dr + r + d), no LayerNorm.
    r, count = variants.bottleneck_for_budget(group_option("model", "gpt2_medium"), "adapter_h", 11_000_000)
    assert count == 48 * (2 * 1024 * r + r + 1024)
    assert abs(count - 11_000_000) <= 48 * (2 * 1024 + 1) / 2
    # Adapter^L: 24 adapters each with its own LayerNorm (2d).
    r, count = variants.bottleneck_for_budget(group_option("model", "gpt2_medium"), "adapter_l", 500_000)
    assert count == 24 * (2 * 1024 * r + r + 1024) + 24 * 2 * 1024


def test_variants_share_base_weights_and_merged_has_the_base_graph(base):
    ids = torch.randint(0, base.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = base(input_ids=ids).logits.clone()
    lora_cfg = {**group_option("method", "lora"), "r": 2, "targets": ["q", "v"]}
    torch.manual_seed(0)  # the same seed before both: the same LoRA weights in both variants
    unmerged, counts = variants.build_variant(base, variants.Variant("lora_unmerged", "lora_unmerged", lora_cfg))
    torch.manual_seed(0)
    merged, merged_counts = variants.build_variant(base, variants.Variant("lora_merged", "lora_merged", lora_cfg))
    # LoRA params: 2 blocks x (q, v) x r x (in + out/3 slice) = 2 * 2 * 2 * (32 + 32)
    assert counts["method_params"] == merged_counts["method_params"] == 2 * 2 * 2 * (32 + 32)
    assert variants.same_graph(merged, base)
    assert not variants.same_graph(unmerged, base)
    assert not lora.lora_layers(merged)
    # The frozen weights are the base's own tensors, except the merged copies of c_attn.
    assert unmerged.transformer.h[0].mlp.c_fc.weight is base.transformer.h[0].mlp.c_fc.weight
    assert merged.transformer.h[0].attn.c_attn.weight.data_ptr() != base.transformer.h[0].attn.c_attn.weight.data_ptr()
    assert variants.unique_bytes(merged, base) == 2 * 32 * 96 * 4
    with torch.inference_mode():
        after = base(input_ids=ids).logits
        assert torch.equal(before, after)  # merging never wrote into the shared base weights
        # ΔW ≠ 0 (B was randomised): merged computes what unmerged computes, and differs from base.
        merged_out, unmerged_out = merged(input_ids=ids).logits, unmerged(input_ids=ids).logits
        assert torch.allclose(merged_out, unmerged_out, atol=1e-5)
        assert not torch.allclose(merged_out, before, atol=1e-5)


def test_merged_with_zero_delta_reproduces_the_base_outputs(base):
    ids = torch.randint(0, base.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(1))
    model = variants.shared_copy(base)
    from lora_repro.methods import apply_method

    apply_method(model, {**group_option("method", "lora"), "r": 2})
    model = lora.merge_and_unload(model)  # B = 0: ΔW = 0
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
    assert [type(m) for m in model.modules()] == [type(m) for m in base.modules()]


def test_run_grid_records_timings_memory_and_environment():
    result = latency.run_grid(tiny_grid(check_trials=3), torch.device("cpu"))
    names = [v.name for v in result.variants]
    assert names[0] == "base"
    # The checks' variants get more passes: the merge check's four and the measured Table 1 budget's adapters.
    check = {"base", "base_copy", "lora_merged", "merged_zero", "adapter_h_large", "adapter_l_large"}
    for variant in result.variants:
        cells = result.cells[variant.name]
        expected = [(1, 8), (2, 8)] if variant.cells is None else [(1, 8)]
        assert [(c["batch"], c["seq"]) for c in cells] == expected
        for cell in cells:  # ... and at Table 1's measured cell (1, 8), where the ordering is checked, every variant
            trials = 3 if variant.name in check or (cell["batch"], cell["seq"]) == (1, 8) else 2
            assert cell["trials"] == trials and len(cell["times_ms"]) == trials
            assert 0 < cell["min_ms"] <= cell["median_ms"]
            assert cell["iqr_ms"] >= 0 and cell["std_ms"] >= 0 and cell["mean_ms"] > 0
            assert ("overhead_pct" in cell) == (variant.name != "base")
        memory = result.memory[variant.name]
        assert memory["peak_rss_bytes"] > 0 and memory["param_bytes"] > 0
        assert memory["peak_rss_bytes"] >= memory["rss_at_start_bytes"] > 0
    assert result.memory["base"]["unshared_param_bytes"] == 0
    assert result.memory["adapter_h_b2"]["unshared_param_bytes"] > 0
    assert result.info["timer"] == "perf_counter" and result.info["device"] == "cpu"
    assert "CPU" in result.info["cuda_timing"] and result.info["num_threads"] >= 1
    assert result.info["dtype"] == "float32"


def test_summary_statistics_and_paired_overhead():
    summary = timing.summarise([0.010, 0.012, 0.011, 0.013], base_s=[0.010, 0.010, 0.010, 0.010])
    assert summary["median_ms"] == pytest.approx(11.5)
    assert summary["mean_ms"] == pytest.approx(11.5)
    assert summary["iqr_ms"] == pytest.approx(1.5)
    assert summary["overhead_pct"] == pytest.approx(15.0)
    assert summary["overhead_pct_paired"] == pytest.approx(15.0)
    assert summary["overhead_pct_paired_ci"] == pytest.approx([0.0, 30.0])  # n=4: (min, max)


def test_median_interval_is_the_binomial_order_statistics():
    assert stats.median_ci(range(16)) == (3, 12)  # coverage 1 - 2 P(Bin(16, .5) <= 3) = 0.979
    assert stats.median_ci(range(30)) == (9, 20)  # 0.957; one step narrower would cover 0.901
    assert stats.median_ci([5.0]) == (5.0, 5.0)
    with pytest.raises(ValueError):
        stats.median_ci([])
    spread = stats.Paired.of([1.0, 1.02, 0.99, 1.05, 0.97, 1.01], [1.0] * 8)  # rounds past the shorter unpaired
    assert (spread.n, spread.low, spread.high) == (6, 0.97, 1.05)
    assert spread.above(1.0) == (True, False)  # median 1.005 > 1, but the interval reaches below
    assert spread.within(0.99, 1.01) == (True, False)
    assert stats.Paired.of([1.1] * 6, [1.0] * 6).within(0.99, 1.01) == (False, True)


def test_thread_noise_compares_identical_models_per_thread_count():
    before = torch.get_num_threads()
    noise = latency.thread_noise(tiny_grid(), [1, 2], rounds=3, cell=(1, 8))
    assert set(noise) == {1, 2} and torch.get_num_threads() == before
    for row in noise.values():
        assert row["base_median_ms"] > 0 and row["base_iqr_pct"] >= 0 and row["copy_base_iqr_pct"] >= 0
        assert row["copy_base_low"] <= row["copy_base_paired"] <= row["copy_base_high"]


def _frame(rows):
    """Report rows from (variant, kind, bottleneck, budget, batch, seq, per-round ratios to a 10 ms base)."""
    out = []
    for variant, kind, bottleneck, budget, batch, seq, ratios in rows:
        times = [10.0 * r for r in ratios]
        out.append({"variant": variant, "kind": kind, "bottleneck": bottleneck, "budget": budget,
                    "method_params": 300, "total_params": 10_000, "batch": batch, "seq": seq,
                    "median_ms": float(pd.Series(times).median()), "iqr_ms": 0.1,
                    "overhead_pct_paired": 100 * (float(pd.Series(ratios).median()) - 1), "times_ms": times})
    return pd.DataFrame(out)


def _cell_rows(batch, seq, h, lo, merged, n=6):
    """base, merged LoRA and one H / L pair at r=10 with constant per-round ratios (a noiseless run)."""
    return [("base", "base", None, None, batch, seq, [1.0] * n),
            ("lora_merged", "lora_merged", None, None, batch, seq, [1 + merged / 100] * n),
            ("adapter_h_b10", "adapter_h", 10, None, batch, seq, [1 + h / 100] * n),
            ("adapter_l_b10", "adapter_l", 10, None, batch, seq, [1 + lo / 100] * n)]


def test_checks_report_each_acceptance_criterion_with_numbers():
    rows = _cell_rows(1, 128, 30.0, 20.0, 0.3) + _cell_rows(4, 256, 5.0, 3.0, -0.2)
    by_name = {c["check"].split(" (")[0]: c for c in checks.checks(_frame(rows))}
    assert len(by_name) == 3
    assert all(c["passed"] and c["resolved"] for c in by_name.values()), by_name
    assert all(checks.result_text(c) == "met" for c in by_name.values())
    rows[2] = ("adapter_h_b10", "adapter_h", 10, None, 1, 128, [1.10] * 6)  # H below L at bs1/128
    failed = [c for c in checks.checks(_frame(rows)) if not c["passed"]]
    assert [c["check"] for c in failed] == ["Adapter^H overhead > Adapter^L overhead > 0 at batch 1, seq 128"]
    assert "H +10.0 % [+10.0, +10.0], L +20.0 % [+20.0, +20.0], H / L -8.3 %" in failed[0]["numbers"]
    assert failed[0]["resolved"] and checks.result_text(failed[0]) == "NOT met"
    results = checks.checks(_frame(rows))
    lines = checks.notes(results, _frame(rows), "cpu")
    assert not any("shrank" in line for line in lines)  # the shrink check passed
    assert len(lines) == 2 and "r=10: H 3.00 %, L 3.00 %" in lines[1]  # the order missed: the arithmetic note
    assert checks.notes(results, _frame(rows), "cuda") == []


def test_a_check_inside_the_noise_says_so():
    noisy = [1.004, 0.985, 1.02, 1.003, 0.995, 1.006]  # median within ± 1 %, interval (min, max) is not
    rows = [r if r[0] != "lora_merged" else (*r[:6], noisy) for r in _cell_rows(1, 128, 30.0, 20.0, 0.0)]
    merge = checks.checks(_frame(rows))[0]
    assert merge["passed"] and not merge["resolved"]
    assert checks.result_text(merge) == "met (within noise: a 95 % interval spans the bound)"
    assert "bs1 seq128: 1.0035 [0.9850, 1.0200]" in merge["numbers"]


def test_a_cpu_that_misses_the_gpu_pattern_says_why():
    rows = []
    for batch, seq, h in [(1, 128, 5.0), (4, 256, 6.0)]:  # overhead grows with the work: not the paper's pattern
        rows += [("base", "base", None, None, batch, seq, [1.0] * 6),
                 ("adapter_h_b10", "adapter_h", 10, None, batch, seq, [1 + h / 100] * 6)]
    same = [1.03, 1.02, 1.04, 1.03, 1.03, 1.02]  # Table 1 budget: H and L the same time, round by round
    rows += [("adapter_h_11M", "adapter_h", 111, "11M", 1, 128, same),
             ("adapter_l_11M", "adapter_l", 222, "11M", 1, 128, same[1:] + same[:1])]
    frame = _frame(rows)
    results = checks.checks(frame)
    assert not next(c for c in results if c["check"].startswith("overhead shrinks"))["passed"]
    order = next(c for c in results if c["check"].startswith("Adapter^H"))
    assert not order["resolved"] and "|Θ|=11M (r_H=111, r_L=222)" in order["numbers"]
    lines = checks.notes(results, frame, "cpu")
    assert ("The CPU pattern differs from the paper's GPU pattern: from the smallest to the largest cell the "
            "overhead shrank for no adapter but not for adapter_h_b10. " + checks.SHRINK_REASON) in lines
    assert any(line.startswith("On a CPU an adapter costs its arithmetic") and "|Θ|=11M (r_H=111, r_L=222): "
               "H 3.00 %, L 3.00 %" in line for line in lines)
    assert checks.notes(results, frame, "cuda") == []  # on a GPU a miss is a finding, not explained away


def test_latency_entry_point_writes_records_tables_and_heatmap(store_root, monkeypatch):
    from experiments import latency as entry
    from lora_repro.store import RunStore

    monkeypatch.setattr(entry, "group_option",
                        lambda group, name: tiny_grid() if group == "bench" else group_option(group, name))
    entry.main(["--grid", "smoke", "--device", "cpu"])
    records = RunStore(store_root).records("latency_cpu_smoke")
    assert {r["method"] for r in records} >= {"base", "lora_merged", "lora_unmerged", "adapter_h_b2", "adapter_l_b4"}
    assert all(r["task"] == "latency" and r["epochs"] and r["memory"]["peak_rss_bytes"] > 0 for r in records)
    assert len({r["timing"]["run_id"] for r in records}) == 1
    md = (store_root / "tables" / "latency_cpu_smoke.md").read_text()
    assert "Table 1: paper vs ours" in md and "random" in md and "LoRA merged / base" in md
    csv = pd.read_csv(store_root / "tables" / "latency_cpu_smoke.csv")
    assert {"variant", "batch", "seq", "median_ms", "iqr_ms", "overhead_pct", "overhead_pct_paired"} <= set(csv.columns)
    assert "times_ms" not in csv.columns and "paired ratio [95 % interval]" in md
    assert (store_root / "figures" / "latency_heatmap_cpu_smoke.png").stat().st_size > 0
    # A rerun of the same config measures nothing: the records stay as they are.
    monkeypatch.setattr(latency, "run_grid", lambda *a, **k: pytest.fail("measured again"))
    entry.main(["--grid", "smoke", "--device", "cpu"])
    again = RunStore(store_root).records("latency_cpu_smoke")
    assert [r["created_at"] for r in again] == [r["created_at"] for r in records]


def test_paper_table1_csv_has_the_nine_cells():
    paper = pd.read_csv(report.PAPER_CSV)
    assert len(paper) == 9
    row = paper[(paper.cell == "bs1_seq128") & (paper.method == "adapter_h")].iloc[0]
    assert (row.ms, row.overhead_pct) == (25.8, 30.3)
