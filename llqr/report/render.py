"""Everything one surface publishes, written in one call (the Snakemake aggregate step's body)."""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import write_figure, write_text
from .bars import render_bars
from .budget import render_budget, render_slcd
from .collect import curves_frame, entries_frame
from .figures import curves_figure
from .formats import excluded_cells, to_latex, to_markdown
from .sweep import sweep_figure, sweep_frames
from .tables import pivot, summarise

# Output name -> file name inside the surface's directory; the workflow's named outputs match.
OUTPUTS = {
    "csv": "table.csv",
    "md": "table.md",
    "tex": "table.tex",
    "png": "figure.png",
    "pdf": "figure.pdf",
    "seeds": "seeds.json",
}


def seeds_record(surface: dict) -> dict:
    """The seeds behind the numbers, kept beside the tables so a reader can rerun any of them."""
    cells = {e["cell"]: int(e["seed"]) for e in surface["entries"]}
    return {"seeds": [int(s) for s in surface["seeds"]], "cells": cells}


# Statuses that are results, not failures: a diverged run is a finding of the surface.
RESULT_STATUSES = ("ok", "diverged")


def failed_cells(surface: dict, results_dir) -> list[str]:
    """One line per cell that is missing or did not end in a result status (ok, diverged)."""
    entries = entries_frame(surface, results_dir)
    bad = entries[~entries["status"].isin(RESULT_STATUSES)]
    return [f"  {cell}: {reason}" for cell, reason in excluded_cells(bad)]


def completeness_error(name: str, failed: list[str]) -> str:
    """The aggregate job's failure message: the failed cells and what to do about them."""
    return (f"surface {name}: {len(failed)} cell(s) failed or missing:\n" + "\n".join(failed) +
            "\nfix their cause and rerun snakemake (delete a cell's summary.json, or use --forcerun on it, to "
            "retrain a cell that recorded a failure), or pass --config allow_missing=true to render without them")


def render_surface(surface: dict, results_dir, out_dir) -> dict:
    """Read the surface's cells under ``results_dir`` and write its tables, figure and seeds.

    Works on a partial run (missing cells are reported, not fatal). Returns output name -> Path.
    """
    out = Path(out_dir)
    paths = {name: out / filename for name, filename in OUTPUTS.items()}
    entries = entries_frame(surface, results_dir)
    excluded = excluded_cells(entries)
    kind = surface.get("kind", "grid")
    if kind == "schedules":  # no cells: the schedule formulas (imported here: they load JAX)
        from .schedules import render_schedules

        parts = render_schedules(surface)
    elif kind == "bars":
        parts = render_bars(surface, summarise(entries, surface), excluded)
    elif kind == "slcd":
        parts = render_slcd(surface, entries, curves_frame(surface, results_dir), excluded)
    elif kind == "budget":
        parts = render_budget(surface, entries, summarise(entries, surface), excluded)
    else:
        table = summarise(entries, surface)
        grid = pivot(table, surface)
        figure = (sweep_figure(surface, sweep_frames(surface, results_dir)) if kind == "sweep"
                  else curves_figure(surface, entries, curves_frame(surface, results_dir)))
        parts = {"csv": table.to_csv(index=False), "md": to_markdown(grid, surface, excluded),
                 "tex": to_latex(grid, surface, excluded), "figure": figure}
    write_text(paths["csv"], parts["csv"])
    write_text(paths["md"], parts["md"])
    write_text(paths["tex"], parts["tex"])
    fig = parts["figure"]
    write_figure(fig, paths["png"])
    write_figure(fig, paths["pdf"])
    write_text(paths["seeds"], json.dumps(seeds_record(surface), indent=2) + "\n")
    return paths
