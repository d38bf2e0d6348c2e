"""The paper's four observations on the low-rank update (Sec. 7), judged in numbers on our sweeps.

(a) a small r suffices: is the metric at r = 1, 2, 4 within the seed spread of r = 64 (Table 6)?
(b) at a fixed budget, adapting more weight types beats one type (Table 5)?
(c) the top direction is shared between r = 8 and r = 64 (φ at i = j = 1 above 0.5), while the
    random control stays near 0 (Figure 3)?
(d) ΔW amplifies directions that W does not emphasise: amplification factor well above 1 (Table 7)?

Each judgement is an Observation: whether it holds (None when the store lacks what it needs), and a
sentence with the numbers, saying plainly where it does not hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lora_repro.analysis import lowrank
from lora_repro.analysis.sweep import Sweep, SweepInputError, load_sweep

SMALL_RANKS = (1, 2, 4)
REFERENCE_RANK = 64
SHARED = 0.5           # the bar for a shared top direction: φ(1, 1) above it
NEAR_ZERO = 0.1        # the random control's φ(1, 1) counts as "near 0" below this
WELL_ABOVE_ONE = 2.0   # an amplification factor counts as "well above 1" from this (the paper: 21.5 and 1.9)
CLAIMS = {"a": "a small r suffices", "b": "more weight types beat one at a fixed budget",
          "c": "the top direction is shared between a small and a large r",
          "d": "ΔW amplifies directions W does not emphasise"}


def _claim(letter: str, name: str) -> str:
    return f"({letter}) {name}: {CLAIMS[letter]}"


@dataclass
class Observation:
    claim: str
    holds: bool | None   # None: the store lacks the runs (or weights) to judge
    numbers: str

    @property
    def verdict(self) -> str:
        return {True: "holds", False: "does not hold", None: "not judged"}[self.holds]


def _spread(point: pd.Series) -> str:
    return f"{point['mean']:.2f} (seeds {point['min']:.2f}-{point['max']:.2f}, n={int(point['n'])})"


def small_rank(sweep: Sweep, small: tuple[int, ...] = SMALL_RANKS, reference: int = REFERENCE_RANK) -> Observation:
    """(a): the mean over seeds at each small r against the min-max over seeds at the reference r."""
    claim = _claim("a", sweep.name)
    points = sweep.points.set_index("config.method.r")
    ranks = sorted(int(r) for r in points.index)
    ref = reference if reference in ranks else ranks[-1]
    smalls = [r for r in small if r in ranks and r != ref]
    if not smalls:
        return Observation(claim, None, f"the sweep has ranks {ranks}, none of {list(small)} below r={ref}")
    top = points.loc[ref]
    parts, holds = [], True
    for r in smalls:
        mean = points.loc[r, "mean"]
        where = "within" if top["min"] <= mean <= top["max"] else ("above" if mean > top["max"] else "below")
        holds &= where != "below"
        parts.append(f"r={r}: {_spread(points.loc[r])}, {where} the spread of r={ref}")
    noise = "" if top["n"] > 1 else f" (one seed at r={ref}: no spread to judge against)"
    note = "" if ref == reference else f" (r={reference} not in the sweep: r={ref} is the largest)"
    return Observation(claim, bool(holds), f"{sweep.metric.removeprefix('best.')} x 100 at r={ref}: "
                       f"{_spread(top)}{note}{noise}; " + "; ".join(parts))


def more_types(sweep: Sweep) -> Observation:
    """(b): the best cell adapting several weight types against the best adapting one, at one budget."""
    claim = _claim("b", sweep.name)
    points = sweep.points
    several = points[points["config.method.targets"].str.contains(r"\+")]
    single = points[~points["config.method.targets"].str.contains(r"\+")]
    if several.empty or single.empty:
        return Observation(claim, None, f"the sweep has cells {list(points['point'])}: needs one-type and "
                           "several-type cells")
    best_several, best_single = several.loc[several["mean"].idxmax()], single.loc[single["mean"].idxmax()]
    gap = best_several["mean"] - best_single["mean"]
    noise = pd.Series([best_several["std"], best_single["std"]]).max()  # NaN with one seed
    size = "one seed per cell: no seed std to compare it with" if pd.isna(noise) else \
        f"{'larger' if gap > noise else 'not larger'} than the seed std ({noise:.2f})"
    cells = ", ".join(f"{{{row['config.method.targets']}}} {row['mean']:.2f}" for _, row in points.iterrows())
    return Observation(claim, bool(gap > 0), (
        f"best of several types {{{best_several['config.method.targets']}}}: {_spread(best_several)}; best single "
        f"type {{{best_single['config.method.targets']}}}: {_spread(best_single)}; difference {gap:+.2f}, {size}; "
        f"every cell (mean): {cells}"))


def phi_means(phi: pd.DataFrame) -> pd.DataFrame:
    """Mean over layers of φ(1, 1), one row per comparison kind, one column per target."""
    return phi.groupby(["kind", "target"])["phi_1_1"].mean().unstack("target")


SAME_SEED, SAME_SEED_START, OTHER_SEEDS, CONTROL = ("rank, same seed, trained", "rank, same seed, initial",
                                                   "rank, different seeds, trained", "random control")


def _judged_comparison(means: pd.DataFrame) -> tuple[str | None, str]:
    """Which trained comparison (c) is judged on, and why: the same seed when its initial matrices share no top
    direction (so a shared one was learned, not drawn), else different seeds (which share no start)."""
    start = means.loc[SAME_SEED_START].max() if SAME_SEED_START in means.index else float("nan")
    if SAME_SEED in means.index and start < NEAR_ZERO:
        return SAME_SEED, f"its initial matrices share no top direction: φ(1, 1) <= {start:.3f}"
    if OTHER_SEEDS in means.index:
        return OTHER_SEEDS, "different seeds share no start"
    return None, ""


def shared_direction(phi: pd.DataFrame, name: str) -> Observation:
    """(c): φ(1, 1) between r_low and r_high (mean over layers, per target), judged on a comparison whose start
    shares no top direction, against the random control; every comparison's numbers are stated."""
    claim = _claim("c", name)
    if phi.empty:
        return Observation(claim, None, "no φ summary (no saved weights and no committed φ table)")
    means = phi_means(phi)
    low, high = int(phi["r_low"].iloc[0]), int(phi["r_high"].iloc[0])
    judged, why = _judged_comparison(means)
    if judged is None or CONTROL not in means.index:
        return Observation(claim, None, f"the φ summary lacks a rank comparison or the control: {list(means.index)}")
    numbers = "; ".join(f"{kind}: " + ", ".join(f"W_{t} {means.loc[kind, t]:.3f}" for t in means.columns)
                        for kind in (SAME_SEED, SAME_SEED_START, OTHER_SEEDS, CONTROL) if kind in means.index)
    shared, control = means.loc[judged].min(), means.loc[CONTROL].max()
    holds = bool(shared > SHARED and control < NEAR_ZERO)
    return Observation(claim, holds, (
        f"mean over layers of φ(1, 1), r={low} vs r={high}: {numbers}. Judged on '{judged}' ({why}): lowest "
        f"{shared:.3f} {'>' if shared > SHARED else '<='} {SHARED}; the control's highest {control:.3f} "
        f"{'<' if control < NEAR_ZERO else '>='} {NEAR_ZERO}"))


def amplifies(table7: pd.DataFrame, name: str) -> Observation:
    """(d): ||ΔW||_F / ||U^T W V^T||_F at each rank, and where ΔW's directions sit in W (against W's own and random)."""
    claim = _claim("d", name)
    if table7.empty:
        return Observation(claim, None, "no Table 7 (no saved weights and no committed table)")
    rows = [f"r={int(row.r)}: factor {row.amplification:.2f}; ‖UᵀWVᵀ‖ with ΔW's directions {row.proj_delta:.3f}, "
            f"W's own {row.proj_W:.3f}, random {row.proj_random:.3f}" for row in table7.itertuples()]
    smallest = table7.loc[table7["r"].idxmin()]
    holds = bool(smallest["amplification"] >= WELL_ABOVE_ONE and smallest["proj_delta"] < smallest["proj_W"])
    return Observation(claim, holds, (
        f"layer {int(smallest['layer'])}, W_q: " + "; ".join(rows)
        + f" (judged at r={int(smallest['r'])}: factor >= {WELL_ABOVE_ONE} and ΔW's directions less present in W than "
        "W's own; the paper: 21.5 at r=4, 1.9 at r=64)"))


def markdown(observations: list[Observation]) -> str:
    """The observations as a markdown list: claim, verdict in bold, then the numbers."""
    return "\n".join(f"- {o.claim}: **{o.verdict}**. {o.numbers}." for o in observations) + "\n"


def _on_sweep(name: str, judge: Callable[[Sweep], Observation], letter: str, root: str | Path | None) -> Observation:
    try:
        return judge(load_sweep(name, root))
    except SweepInputError as err:
        return Observation(_claim(letter, name), None, str(err))


def judge_all(figures_dir: Path, root: str | Path | None = None,
              rank_sweeps: tuple[str, ...] = ("sweep_rank_glue", "sweep_rank_e2e"),
              targets_sweep: str = "sweep_targets_glue") -> tuple[list[Observation], lowrank.LowRankView]:
    """(a) on every rank sweep, (b) on the weight-type sweep, (c) and (d) on the first rank sweep's φ and
    Table 7 (from its saved weights, else its committed tables: the view says which)."""
    observations = [_on_sweep(name, small_rank, "a", root) for name in rank_sweeps]
    observations.append(_on_sweep(targets_sweep, more_types, "b", root))
    view = lowrank.view(rank_sweeps[0], figures_dir, root)
    observations += [shared_direction(view.phi_summary, rank_sweeps[0]), amplifies(view.amplification, rank_sweeps[0])]
    return observations, view
