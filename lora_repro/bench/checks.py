"""The latency benchmark's acceptance checks, each resting on paired ratios with 95 % intervals.

A check is (passed, resolved): passed when every comparison holds, resolved when the intervals agree
(see `verdict`). They compare the per-round pass times stored in a run's records (`times_ms`), so
they belong with the benchmark; `report.latency` only renders their results and notes.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from lora_repro.bench.stats import Paired


def cell(frame: pd.DataFrame, variant: str, batch: int, seq: int) -> pd.Series | None:
    """One variant's row at one (batch, seq) cell, or None where it did not run."""
    rows = frame[(frame.variant == variant) & (frame.batch == batch) & (frame.seq == seq)]
    return None if rows.empty else rows.iloc[0]


def variant_for(frame: pd.DataFrame, kind: str, budget: str) -> str | None:
    """The variant of an adapter kind sized for a Table 1 |Θ| budget, if the run had one."""
    names = frame[(frame.kind == kind) & (frame.budget == budget)].variant.unique()
    return names[0] if len(names) else None


def paired(frame: pd.DataFrame, variant: str, reference: str, batch: int, seq: int) -> Paired | None:
    """variant / reference at one cell, round by round (both ran in the same interleaved rounds)."""
    a, b = cell(frame, variant, batch, seq), cell(frame, reference, batch, seq)
    return None if a is None or b is None else Paired.of(a.times_ms, b.times_ms)


def verdict(outcomes: list[tuple[bool, bool]]) -> tuple[bool, bool]:
    """A check's (passed, resolved) from its comparisons' (holds, interval agrees).

    Passed: every comparison holds. Resolved: a pass whose every interval agrees, or a miss with at
    least one comparison whose interval lies wholly on the wrong side.
    """
    passed = all(holds for holds, _ in outcomes)
    if passed:
        return True, all(sure for _, sure in outcomes)
    return False, any(sure for holds, sure in outcomes if not holds)


def result_text(item: dict[str, Any]) -> str:
    text = "met" if item["passed"] else "NOT met"
    return text if item["resolved"] else f"{text} (within noise: a 95 % interval spans the bound)"


SHRINK_REASON = (
    "On the paper's GPU a small batch leaves the hardware idle and latency is set by the sequence of kernels, to "
    "which the adapter layers add steps that a bigger batch hides (the paper, Sec. 3: adapter layers \"have to be "
    "processed sequentially\"; the authors in LoRA issue #129: small batches need width-parallelism and adapters "
    "add depth). A CPU is busy already at batch 1: fixed per-layer costs add to the adapters' arithmetic only at "
    "the smallest sizes, so the overhead shrinks little, and not measurably where that arithmetic is small."
)


def shrink_note(shrink: dict[str, Any]) -> str:
    """Which adapters' overhead shrank, which did not (and whether that is within noise), and why a CPU differs."""
    grew = [(variant, sure) for variant, holds, sure in shrink["outcomes"] if not holds]
    shrank = [variant for variant, holds, _ in shrink["outcomes"] if holds]
    text = (f"The CPU pattern differs from the paper's GPU pattern: from the smallest to the largest cell the "
            f"overhead shrank for {', '.join(shrank) or 'no adapter'} but not for {', '.join(v for v, _ in grew)}")
    unresolved = [v for v, sure in grew if not sure]
    if unresolved:
        text += f" ({', '.join(unresolved)}: within noise, the two cells' intervals overlap)"
    return f"{text}. {SHRINK_REASON}"


def arithmetic_note(pairs: list[tuple[str, pd.Series, pd.Series]], total: int) -> str:
    """Why a CPU may not order Adapter^H and Adapter^L: the arithmetic each adds, against the base's."""
    shares = "; ".join(f"{label}: H {100 * h.method_params / total:.2f} %, L {100 * lo.method_params / total:.2f} %"
                       for label, h, lo in pairs)
    return (
        "On a CPU an adapter costs its arithmetic: about one multiply-add per added parameter per token. As a "
        f"share of the base's {total:,} parameters: {shares}. Where Adapter^H and Adapter^L add the same "
        "arithmetic (equal |Θ|) or differ by less than this run resolves (the H / L intervals above), a CPU "
        "cannot order them. The paper's GPU gap at batch 1 (+30.3 % vs +20.7 %) comes from Adapter^H's extra "
        "sequential kernels, which a GPU at batch 1 waits on and a CPU does not."
    )


def notes(results: list[dict[str, Any]], frame: pd.DataFrame, device: str) -> list[str]:
    """The lines that say why a CPU differs from the GPU paper, when it does; none on a GPU."""
    if device != "cpu":
        return []
    lines = []
    shrink = next((item for item in results if item["check"].startswith("overhead shrinks")), None)
    if shrink is not None and not shrink["passed"]:
        lines += ["", shrink_note(shrink)]
    order = next((item for item in results if item["check"].startswith("Adapter^H")), None)
    if order is not None and not (order["passed"] and order["resolved"]):
        lines += ["", arithmetic_note(order["pairs"], int(frame[frame.variant == "base"].total_params.iloc[0]))]
    return lines


def merge_check(frame: pd.DataFrame) -> dict[str, Any] | None:
    """LoRA merged / base within 1.00 ± 0.01 in every cell, with the noise floor and the ΔW = 0 control."""
    cells = frame[frame.variant == "lora_merged"][["batch", "seq"]].itertuples(index=False)
    merged = {(b, s): paired(frame, "lora_merged", "base", b, s) for b, s in cells}
    if not merged:
        return None
    outcomes = [p.within(0.99, 1.01) for p in merged.values()]
    passed, resolved = verdict(outcomes)
    numbers = "paired ratio [95 % interval] " + "; ".join(
        f"bs{b} seq{s}: {p.ratio()}" for (b, s), p in merged.items())
    controls = (("base_copy", "base", "noise floor (a second instance of the base model / base)"),
                ("lora_merged", "merged_zero", "merged / merged with ΔW = 0 (the same private weight copies)"))
    for variant, reference, label in controls:
        medians = [p.median for b, s in merged if (p := paired(frame, variant, reference, b, s)) is not None]
        if medians:
            numbers += f"; {label}: {min(medians):.4f} .. {max(medians):.4f}"
    return {"check": "LoRA merged / base within 1.00 ± 0.01 (every cell)", "passed": passed, "resolved": resolved,
            "numbers": numbers}


def order_check(frame: pd.DataFrame) -> dict[str, Any] | None:
    """Adapter^H > Adapter^L > 0 at batch 1, seq 128 (else the smallest cell), per bottleneck and per |Θ|."""
    if frame[(frame.batch == 1) & (frame.seq == 128)].shape[0]:
        batch, seq = 1, 128
    else:
        first = frame.assign(work=frame.batch * frame.seq).sort_values(["work", "batch"]).iloc[0]
        batch, seq = int(first.batch), int(first.seq)
    at = frame[(frame.batch == batch) & (frame.seq == seq)]
    pairs: list[tuple[str, pd.Series, pd.Series]] = []
    by_r = at[at.budget.isna()]
    for r in sorted({*by_r.bottleneck.dropna().astype(int)}):
        h = by_r[(by_r.kind == "adapter_h") & (by_r.bottleneck == r)]
        lo = by_r[(by_r.kind == "adapter_l") & (by_r.bottleneck == r)]
        if not h.empty and not lo.empty:
            pairs.append((f"r={r}", h.iloc[0], lo.iloc[0]))
    for budget in sorted(at.budget.dropna().unique()):
        h = at[(at.kind == "adapter_h") & (at.budget == budget)]
        lo = at[(at.kind == "adapter_l") & (at.budget == budget)]
        if not h.empty and not lo.empty:
            h, lo = h.iloc[0], lo.iloc[0]
            pairs.append((f"|Θ|={budget} (r_H={int(h.bottleneck)}, r_L={int(lo.bottleneck)})", h, lo))
    if not pairs:
        return None
    outcomes, parts = [], []
    for label, h, lo in pairs:
        h_base = paired(frame, h.variant, "base", batch, seq)
        lo_base = paired(frame, lo.variant, "base", batch, seq)
        h_lo = paired(frame, h.variant, lo.variant, batch, seq)
        h_above_l = h_base.median > lo_base.median  # the overheads as the table shows them; H / L says if resolved
        outcomes += [(h_above_l, h_lo.low > 1 if h_above_l else h_lo.high <= 1), lo_base.above(1.0)]
        parts.append(f"{label}: H {h_base.pct()}, L {lo_base.pct()}, H / L {h_lo.pct()}")
    passed, resolved = verdict(outcomes)
    return {"check": f"Adapter^H overhead > Adapter^L overhead > 0 at batch {batch}, seq {seq}", "passed": passed,
            "resolved": resolved, "numbers": "; ".join(parts), "pairs": pairs}


def shrink_check(frame: pd.DataFrame) -> dict[str, Any] | None:
    """Each Figure 5 adapter's overhead at the largest cell below its overhead at the smallest."""
    cells = frame[["batch", "seq"]].drop_duplicates().assign(work=lambda d: d.batch * d.seq)
    cells = cells.sort_values(["work", "batch"])
    if len(cells) < 2:
        return None
    (b0, s0), (b1, s1) = (cells.iloc[0].batch, cells.iloc[0].seq), (cells.iloc[-1].batch, cells.iloc[-1].seq)
    outcomes, parts = [], []
    for variant in sorted(frame[frame.kind.isin(["adapter_h", "adapter_l"]) & frame.budget.isna()].variant.unique()):
        small, large = paired(frame, variant, "base", b0, s0), paired(frame, variant, "base", b1, s1)
        if small is None or large is None:
            continue
        holds = large.median < small.median
        outcomes.append((variant, holds, large.high < small.low if holds else large.low >= small.high))
        parts.append(f"{variant}: {small.pct()} -> {large.pct()}")
    if not outcomes:
        return None
    passed, resolved = verdict([(holds, sure) for _, holds, sure in outcomes])
    return {"check": f"overhead shrinks as batch x seq grows (batch {b0}, seq {s0} vs batch {b1}, seq {s1})",
            "passed": passed, "resolved": resolved, "numbers": "; ".join(parts), "outcomes": outcomes}


def checks(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The acceptance checks, each with the paired ratios (95 % intervals) it rests on."""
    return [item for item in (merge_check(frame), order_check(frame), shrink_check(frame)) if item is not None]
