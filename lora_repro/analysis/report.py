"""A sweep's whole report from the store: table (md/csv), figure, and for a rank sweep with saved
weights the φ heat maps and the Table 7 analogue; optionally mirrored to a wandb summary run."""

from __future__ import annotations

import logging
from pathlib import Path

from lora_repro.analysis import lowrank, plots
from lora_repro.analysis.sweep import load_sweep, markdown, write_tables
from lora_repro.io import atomic_write_text
from lora_repro.paths import results_dir

log = logging.getLogger(__name__)


def write_sweep_report(name: str, root: str | Path | None = None, metric: str | None = None,
                       wandb_logger: dict | None = None) -> dict[str, Path]:
    """Write results/tables/sweep_<name>.{md,csv} and results/figures/sweep_<name>_*.png; returns the paths.

    `root`: the store (default results_dir()); tables and figures go under the same root.
    `wandb_logger`: logger settings (project, dir, mode) to log the tables and figures to the group's
    summary run; None logs nothing.
    """
    base = Path(root) if root is not None else results_dir()
    sweep = load_sweep(name, root, metric)
    tables_dir, figures_dir = base / "tables", base / "figures"
    earlier = _lowrank_sections(tables_dir / f"{sweep.stem}.md")
    paths = write_tables(sweep, tables_dir)
    figures = {sweep.kind: plots.sweep_figure(sweep, figures_dir)}
    frames = {"points": sweep.points}
    numbers: dict[str, float] = {}
    missing = lowrank.missing_weights(sweep, root) if sweep.kind == "rank" else []
    if sweep.kind == "rank" and not missing:
        report = lowrank.analyse(sweep, figures_dir, root)
        figures.update(report.figures)
        atomic_write_text(paths["md"], markdown(sweep) + "\n" + lowrank.markdown(report))
        paths.update(lowrank.write_tables(report, tables_dir, sweep.stem))
        frames.update({"table7": report.amplification, "phi": report.phi_summary})
        numbers = lowrank.summary_numbers(report)
    elif sweep.kind == "rank":
        log.info("%s: %d runs have no saved weights on disk (e.g. %s): φ and Table 7 are not recomputed; the "
                 "table keeps the ones computed from them before", name, len(missing), missing[0])
        if earlier:
            atomic_write_text(paths["md"], markdown(sweep) + "\n" + earlier)
    paths.update({f"figure_{key}": path for key, path in figures.items()})
    if wandb_logger is not None:
        from lora_repro.tracking import log_report

        paths["wandb_run"] = log_report(name, frames, figures, summary={"runs": len(sweep.runs), **numbers},
                                        logger=wandb_logger)
    return paths


def _lowrank_sections(table: Path) -> str:
    """The φ / Table 7 sections of a rank sweep's existing table (computed from the saved weights), kept
    when a rewrite cannot recompute them: the weights are a cache, absent from a fresh clone."""
    text = table.read_text(encoding="utf-8") if table.is_file() else ""
    start = text.find(lowrank.SECTIONS_START)
    return text[start:] if start >= 0 else ""
