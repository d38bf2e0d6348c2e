"""results/tables/bench_peer.md from the raw results of a `bench.peer.race` (results/tables/bench_peer.json).

Three comparisons, each labelled by what it holds equal:
- like for like (`equal`, the headline): identical padded batches, fp32, torch AdamW, equal threads;
  the paired ratio pairs step i of ours with step i of PEFT in the same round (the same batch);
- as users run them (`default`): each framework's defaults (different batches and padding);
- each at its best (`best`): bf16 autocast, length grouping, eager attention (results from before the
  kernel was recorded ran sdpa), torch.compile where enabled.
Every number, the hardware included, comes from the run's own results.
"""

from __future__ import annotations

import statistics
from typing import Any

from lora_repro.bench.peer_jobs import SETTINGS
from lora_repro.bench.stats import Paired

STEP_TARGET = 0.90
MEMORY_TARGET = 1.0
INFER_TOLERANCE = 0.01
MIB = 2**20
LABELS = {
    "equal": "like for like: identical padded batches, fp32, torch AdamW, same threads",
    "default": "as users run them: each framework's defaults (ours groups batches by length, Trainer samples "
               "at random)",
    "best": "each at its best: bf16 autocast, length grouping (the attention kernel and torch.compile as the "
            "settings column says)",
}


def _side(results: list[dict], job: str) -> list[dict]:
    return sorted((r for r in results if r["job"] == job), key=lambda r: r["round"])


def _memory(rows: list[dict]) -> dict[str, float]:
    """Medians over rounds: RSS right after the side's imports, peak RSS, and what the job added."""
    imports = statistics.median(r["rss_after_imports_bytes"] for r in rows) / MIB
    peak = statistics.median(r["peak_rss_bytes"] for r in rows) / MIB
    added = statistics.median(r["peak_rss_bytes"] - r["rss_after_imports_bytes"] for r in rows) / MIB
    return {"imports_mib": imports, "peak_mib": peak, "added_mib": added}


def compare(results: list[dict], setting: str) -> dict[str, Any] | None:
    """Ours vs PEFT under one setting: mean step and CPU time over every timed step of every round, the
    ratio of those means, and the paired ratio with its 95 % interval (per step when both sides saw the
    same batches, else per round)."""
    ours, peft = _side(results, f"ours_{setting}"), _side(results, f"peft_{setting}")
    if not ours or not peft:
        return None
    steps = {name: [t for r in rows for t in r["step_s"]] for name, rows in (("ours", ours), ("peft", peft))}
    cpu = {name: [t for r in rows for t in r["cpu_step_s"]] for name, rows in (("ours", ours), ("peft", peft))}
    same_batches = all(o["batch_digests"] == p["batch_digests"] for o, p in zip(ours, peft, strict=False))
    if same_batches:
        paired, unit = Paired.of(steps["ours"], steps["peft"]), "steps"
    else:
        paired, unit = Paired.of([r["step_s_mean"] for r in ours], [r["step_s_mean"] for r in peft]), "rounds"
    out: dict[str, Any] = {"setting": setting, "rounds": min(len(ours), len(peft)), "same_batches": same_batches,
                           "paired": paired, "paired_unit": unit}
    for name, rows in (("ours", ours), ("peft", peft)):
        out[name] = {"step_ms": 1000 * statistics.fmean(steps[name]), "cpu_ms": 1000 * statistics.fmean(cpu[name]),
                     "padded_tokens": statistics.fmean(r["padded_tokens_per_step"] for r in rows),
                     "precision": rows[0]["precision"], "optimizer": rows[0]["optimizer"],
                     "attention": rows[0].get("attention", "sdpa"),  # jobs before it was recorded ran sdpa
                     "compiled": rows[0]["compiled"], "trainable": rows[0]["trainable_params"], **_memory(rows)}
    out["step_ratio"] = out["ours"]["step_ms"] / out["peft"]["step_ms"]
    out["cpu_ratio"] = out["ours"]["cpu_ms"] / out["peft"]["cpu_ms"]
    out["memory_ratio"] = out["ours"]["peak_mib"] / out["peft"]["peak_mib"]
    return out


def summarise(raw: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for setting in SETTINGS if (row := compare(raw["results"], setting)) is not None]


def _caption(raw: dict[str, Any], command: str) -> list[str]:
    s, env = raw["spec"], raw["results"][0]["env"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    loads = raw.get("loads")
    return [
        "# lora-repro vs PEFT + HF Trainer: one LoRA fine-tuning job",
        "",
        f"Command: `{command}` ({raw['wall_s'] / 60:.1f} min). Hardware (as the jobs recorded it): {env['cpu']}, "
        f"{env['cpu_count']} logical CPUs, {env['machine']}; {versions}."
        + (f" Load average (1, 5, 15 min) before {loads['before']}, after {loads['after']} (the jobs' own threads "
           "count; on a quiet machine `before` is near 0)." if loads else ""),
        "",
        f"Job (both sides): MiniLM-L6, SST-2 train seeded subset of {s['train_subset']} rows, LoRA r={s['r']} "
        f"alpha={s['alpha']} on q and v (Kaiming A, zero B, no dropout), classifier + pooler trained, AdamW lr "
        f"{s['lr']} with linear decay after warm-up, gradient clipping {s['grad_clip']}, batch {s['batch_size']}, "
        f"max length {s['max_length']}, {s['steps']} steps ({s['skip']} warm-up steps not timed), {s['threads']} "
        "threads, each job in a fresh process. Step time: the interval between step boundaries (data, forward, "
        "backward, clipping, optimizer, scheduler), wall (`perf_counter`) and process CPU time (`process_time`, "
        "all threads). Ratios are ours / PEFT: below 1, ours is faster or smaller.",
        "",
    ]


def _step_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| comparison | ours ms/step | PEFT ms/step | ratio of means | paired ratio [95 %] | ours CPU ms/step "
             "| PEFT CPU ms/step | CPU ratio | padded tokens/step (ours, PEFT) | settings (ours; PEFT) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        o, p, paired = row["ours"], row["peft"], row["paired"]
        settings = "; ".join(f"{side['precision']}, {side['attention']} attention, {side['optimizer']}"
                             + (", compiled" if side["compiled"] else "")
                             for side in (o, p))
        lines.append(
            f"| {LABELS[row['setting']]} | {o['step_ms']:.1f} | {p['step_ms']:.1f} | **{row['step_ratio']:.3f}** | "
            f"{paired.ratio()} (median of {paired.n} paired {row['paired_unit']}) | {o['cpu_ms']:.1f} | "
            f"{p['cpu_ms']:.1f} | {row['cpu_ratio']:.3f} | {o['padded_tokens']:.0f}, {p['padded_tokens']:.0f} | "
            f"{settings} |")
    return lines


def _memory_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| comparison | side | RSS after imports MiB | peak RSS MiB | peak - imports MiB "
             "| peak ratio ours / PEFT |", "|---|---|---|---|---|---|"]
    for row in rows:
        for side in ("ours", "peft"):
            m = row[side]
            ratio = f"{row['memory_ratio']:.3f}" if side == "ours" else ""
            lines.append(f"| {row['setting']} | {side} | {m['imports_mib']:.0f} | {m['peak_mib']:.0f} | "
                         f"{m['added_mib']:.0f} | {ratio} |")
    return lines


def _targets(rows: list[dict[str, Any]], infer: dict | None) -> list[str]:
    lines = ["| target | measured | result |", "|---|---|---|"]
    equal = next((row for row in rows if row["setting"] == "equal"), None)
    if equal is not None:
        met = equal["step_ratio"] <= STEP_TARGET
        lines.append(f"| like-for-like step-time ratio <= {STEP_TARGET:.2f} | {equal['step_ratio']:.3f} (paired "
                     f"{equal['paired'].ratio()}) | {'met' if met else 'NOT met'} |")
        met = equal["memory_ratio"] <= MEMORY_TARGET
        lines.append(f"| like-for-like peak-memory ratio <= {MEMORY_TARGET:.1f} | {equal['memory_ratio']:.3f} | "
                     f"{'met' if met else 'NOT met'} |")
    if infer:
        merged, interval = infer["ratio_total"]["merged"], infer["ratio_paired_interval"]["merged"]
        lines.append(f"| inference merged / base = 1.00 ± {INFER_TOLERANCE:.2f} | {merged:.4f} (paired median "
                     f"{infer['ratio_paired_median']['merged']:.4f} [95 %: {interval[0]:.4f}, {interval[1]:.4f}]); "
                     f"unmerged / base {infer['ratio_total']['unmerged']:.4f} | "
                     f"{'met' if abs(merged - 1) <= INFER_TOLERANCE else 'NOT met'} |")
    return lines


def _infer_section(infer: dict, spec: dict) -> list[str]:
    ms, total, ratio = infer["ms_median"], infer["ms_total"], infer["ratio_total"]
    return [
        "", "## Inference: base vs LoRA merged (merge_and_unload) vs unmerged", "",
        f"SST-2 dev, batch {spec['infer_batch_size']}, max length {spec['max_length']}, {infer['batches_timed']} "
        f"forward passes per model, interleaved in a rotating order, torch.inference_mode, {spec['threads']} "
        f"threads; LoRA B drawn at random so ΔW ≠ 0. Merged model has the base's module tree: "
        f"{infer['merged_same_graph_as_base']}; merged logits match unmerged: {infer['merged_matches_unmerged']}.",
        "", "| model | median ms / batch | total ms | total / base |", "|---|---|---|---|",
        f"| base | {ms['base']:.2f} | {total['base']:.0f} | 1 |",
        f"| LoRA merged | {ms['merged']:.2f} | {total['merged']:.0f} | {ratio['merged']:.4f} |",
        f"| LoRA unmerged | {ms['unmerged']:.2f} | {total['unmerged']:.0f} | {ratio['unmerged']:.4f} |",
    ]


def _profile_sections(profiles: dict[str, Any]) -> list[str]:
    """Each side's top ops, and a line per side saying where its time went (shares of self CPU time)."""
    lines: list[str] = []
    shares = []
    for side, prof in profiles.items():
        lines += ["", f"## Profile: {side}, {prof['setting']} setting ({prof['steps']} steps, {prof['seconds']:.2f} s "
                  "under the profiler)", "", "| op | calls | self CPU ms | CPU total ms |", "|---|---|---|---|"]
        total = next(r["self_cpu_ms"] for r in prof["table"] if r["op"] == "[all ops]")
        groups = []
        for row in prof["table"]:
            if row["op"].startswith("["):
                share = 100 * row["self_cpu_ms"] / total if total else 0.0
                lines.append(f"| **{row['op']}** | {row['calls']} | {row['self_cpu_ms']:.1f} ({share:.0f} %) | |")
                if row["op"] != "[all ops]":
                    groups.append(f"{row['op'][1:-1]} {share:.0f} %")
            else:
                lines.append(f"| `{row['op']}` | {row['calls']} | {row['self_cpu_ms']:.1f} "
                             f"| {row['cpu_total_ms']:.1f} |")
        shares.append(f"- {side}: {total / prof['steps']:.1f} ms of op self time per step; " + ", ".join(groups)
                      + "; the rest is element-wise ops, copies and Python.")
    return lines + (["", "## Where the time goes (profiled steps)", "", *shares] if shares else [])


def _rounds_table(results: list[dict]) -> list[str]:
    lines = ["", "## Rounds", "", "| round | job | mean step ms | mean CPU ms | RSS after imports MiB | peak RSS MiB "
             "| job wall s |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['round']} | {r['job']} | {1000 * r['step_s_mean']:.1f} | {1000 * r['cpu_step_s_mean']:.1f} "
                     f"| {r['rss_after_imports_bytes'] / MIB:.0f} | {r['peak_rss_bytes'] / MIB:.0f} "
                     f"| {r['job_wall_s']:.1f} |")
    return lines


def to_markdown(raw: dict[str, Any], command: str) -> str:
    rows = summarise(raw)
    lines = _caption(raw, command)
    lines += ["## Step time", "", *_step_table(rows), ""]
    if any(row["setting"] == "equal" and not row["same_batches"] for row in rows):
        lines += ["**Warning:** the like-for-like jobs did not see identical batches; that row is not like for like.",
                  ""]
    lines += ["Only the first row compares equal settings. The second and third differ in the batches each side "
              "trains on (its sampler and padding: see padded tokens/step) and, in the third, in what each framework "
              "offers; their ratios are paired per round.", ""]
    lines += ["## Memory", "", *_memory_table(rows), "", "## Targets", "", *_targets(rows, raw.get("infer"))]
    if raw.get("infer"):
        lines += _infer_section(raw["infer"], raw["spec"])
    lines += _rounds_table(raw["results"])
    lines += _profile_sections(raw.get("profiles") or {})
    return "\n".join(lines) + "\n"
