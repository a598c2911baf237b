"""The pivot written out as Markdown (to read) and as a LaTeX tabular (to \\input in the paper).

Both show the same text per position, so the two can be checked against each other and
against table.csv; only the markup differs.
"""

from __future__ import annotations

import math

import pandas as pd

from .layout import variant_name
from .tables import Pivot

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
    "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip


def decimals(metric: str) -> int:
    """Losses need more digits than percentages (accuracy, BLEU) to tell runs apart; byte counts
    are whole numbers."""
    if metric.endswith("_bytes"):
        return 0
    return 4 if "loss" in metric else 2


def value_text(record, metric: str, pm: str = "±") -> str:
    """"mean ± std", "(k/n)" appended when only k of n seeds finished, else the position's status."""
    if record is None:
        return "-"
    if record["n_ok"] == 0:
        return record["status"]
    d = decimals(metric)
    text = f"{record['final_mean']:.{d}f}"
    if not math.isnan(record["final_std"]):
        text += f" {pm} {record['final_std']:.{d}f}"
    if record["n_ok"] < record["n_seeds"]:
        text += f" ({record['n_ok']}/{record['n_seeds']})"
    return text


def exclusion_reason(row) -> str:
    """Why a cell is not in the means, in words."""
    status = row["status"]
    message = None if pd.isna(row["message"]) else str(row["message"])
    if status == "diverged":
        step = row["diverged_at_step"]
        return "diverged" if pd.isna(step) else f"diverged at step {int(step)}"
    if status == "missing":
        return f"missing ({message})" if message else "missing"
    return f"{status}: {message}" if message else status


def excluded_cells(entries: pd.DataFrame) -> list:
    """(cell id, reason) for every cell that did not finish ok, each once, in surface order."""
    bad = entries[entries["status"] != "ok"].drop_duplicates("cell")
    return [(row["cell"], exclusion_reason(row)) for _, row in bad.iterrows()]


def method_note(pivot: Pivot, surface: dict) -> str:
    """What the numbers are, so the table can be read without the config."""
    better = "higher" if surface["mode"] == "max" else "lower"
    seeds = ", ".join(str(s) for s in surface["seeds"])
    parts = [
        f"Final {surface['metric']} ({better} is better): mean ± sample std over "
        f"{len(surface['seeds'])} seeds ({seeds})."
    ]
    if pivot.column_axes:
        parts.append(f"Columns: {variant_name(pivot.column_axes)}.")
    records = list(pivot.cells.values())
    if any(r["best"] for r in records):
        parts.append("Bold: best per preset and column.")
    if any(0 < r["n_ok"] < r["n_seeds"] for r in records):
        parts.append("(k/n): mean over the k of n seeds that finished ok; the others are listed below.")
    return " ".join(parts)


def _header(pivot: Pivot, metric: str) -> list:
    return [*pivot.row_axes, *[variant_name(k) or metric for k in pivot.column_keys]]


def _grid(pivot: Pivot, show) -> list:
    """One list of strings per table row: row labels, then ``show(record)`` per column."""
    return [[*rk, *(show(pivot.cells.get((rk, ck))) for ck in pivot.column_keys)] for rk in pivot.row_keys]


def _md_escape(text) -> str:
    return str(text).replace("|", r"\|")


def to_markdown(pivot: Pivot, surface: dict, excluded: list) -> str:
    """Heading, caption, pipe table, then notes and the cells left out of the means."""
    metric = surface["metric"]
    header = _header(pivot, metric)
    rule = ["---"] * len(pivot.row_axes) + ["---:"] * len(pivot.column_keys)

    def show(record):
        text = value_text(record, metric)
        return f"**{text}**" if record is not None and record["best"] else text

    rows = [[_md_escape(c) for c in r] for r in _grid(pivot, show)]
    out = [f"# {surface['title']}", ""]
    if surface.get("caption"):
        out += [surface["caption"], ""]
    out += ["| " + " | ".join(r) + " |" for r in ([_md_escape(h) for h in header], rule, *rows)]
    out += ["", method_note(pivot, surface)]
    if excluded:
        out += ["", "Cells not in the means:", ""]
        out += [f"- `{cell}`: {reason}" for cell, reason in excluded]
    return "\n".join(out) + "\n"


def latex_escape(text) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def _comment(text) -> str:
    return "% " + " ".join(str(text).split())


def _blank_repeats(rows: list, depth: int) -> list:
    """Leave a row label empty where it repeats the row above (the usual paper layout)."""
    out, previous = [], None
    for row in rows:
        labels = row[:depth]
        shown = [
            "" if previous is not None and labels[: i + 1] == previous[: i + 1] else lab
            for i, lab in enumerate(labels)
        ]
        out.append([*shown, *row[depth:]])
        previous = labels
    return out


def to_latex(pivot: Pivot, surface: dict, excluded: list) -> str:
    """A booktabs tabular; title, caption and notes ride along as comments for the paper's author."""
    metric = surface["metric"]
    depth = len(pivot.row_axes)

    def show(record):
        if record is None or record["n_ok"] == 0:  # a status word, the only free text in a value cell
            return latex_escape(value_text(record, metric))
        text = value_text(record, metric, r"$\pm$")  # digits and punctuation only: nothing to escape
        return rf"\textbf{{{text}}}" if record["best"] else text

    grid = [[*(latex_escape(c) for c in row[:depth]), *row[depth:]] for row in _grid(pivot, show)]
    spec = "l" * depth + "r" * len(pivot.column_keys)
    out = [_comment(surface["title"])]
    if surface.get("caption"):
        out.append(_comment(surface["caption"]))
    out += [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in _header(pivot, metric)) + r" \\",
        r"\midrule",
        *[" & ".join(row) + r" \\" for row in _blank_repeats(grid, depth)],
        r"\bottomrule",
        r"\end{tabular}",
        _comment(method_note(pivot, surface)),
    ]
    out += [_comment(f"not in the means: {cell}: {reason}") for cell, reason in excluded]
    return "\n".join(out) + "\n"



def simple_markdown(header: list, rows: list) -> str:
    """A plain pipe table of strings (first column left-aligned, the rest right-aligned)."""
    rule = ["---"] + ["---:"] * (len(header) - 1)
    lines = [[_md_escape(c) for c in r] for r in (header, rule, *rows)]
    return "\n".join("| " + " | ".join(r) + " |" for r in lines) + "\n"


def simple_latex(header: list, rows: list, comment: str = "") -> str:
    """A booktabs tabular of strings, every cell escaped; ``comment`` rides along above it."""
    out = [_comment(comment)] if comment else []
    out += [
        rf"\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in header) + r" \\",
        r"\midrule",
        *[" & ".join(latex_escape(c) for c in row) + r" \\" for row in rows],
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(out) + "\n"
