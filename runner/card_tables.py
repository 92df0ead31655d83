"""One table per card kind: numbers from different cards never share a table or a Speed X baseline.

A matrix with ``cards: [H100, H200]`` runs each GPU cell, the baseline too, once
per card. Its results are rendered into cards/<card>/ (table.md, .csv, .json,
.html and charts, as runner.table writes them), each against that card's own
baseline; CPU rows, which no card ran, go into cards/cpu/. The run folder's
table.md then lists the tables, with what each was measured on, and its
table.csv and table.json hold every row with a Card column. A run without cards
(or whose results are all of one card) gets the single table it always had.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from runner.expand import Cell
from runner.host import result_hardware
from runner.shared import write_text_atomic
from runner.table import render

CARDS_FOLDER = "cards"
CPU_GROUP = "cpu"  # the folder of the CPU rows of a run split by card


def card_of(result: dict[str, Any]) -> str | None:
    """The card kind a result's cell was made for (None: a run without cards, or a CPU cell)."""
    return result["cell"].get("card")


def render_by_card(results: list[dict[str, Any]], baselines: dict[str | None, Cell], folder: Path) -> str:
    """Write the run's table(s) into folder; return the text to print."""
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault(card_of(result), []).append(result)
    if set(groups) == {None}:
        return render(results, baselines[next(iter(baselines))].id, folder)
    printed, index, frames = [], [], []
    for card in sorted(groups, key=lambda c: (c is None, c or "")):
        name = card or CPU_GROUP
        part = folder / CARDS_FOLDER / name
        part.mkdir(parents=True, exist_ok=True)
        baseline = baselines.get(card)
        text = render(groups[card], baseline.id if baseline else None, part, run_folder=folder)
        printed += [f"== {name} ({part / 'table.md'})", text, ""]
        hardware = sorted({h for r in groups[card] if (h := result_hardware(r))})
        index.append(
            f"- [{name}]({CARDS_FOLDER}/{name}/table.md): {len(groups[card])} rows"
            + (f"; measured on {' | '.join(hardware)}" if hardware else "")
        )
        frames.append(pd.read_csv(part / "table.csv").assign(Card=name))
    markdown = [
        "One table per card kind: numbers from different cards never share a table or a Speed X baseline; "
        "each card's table compares against the baseline run on that card.",
        "",
        *index,
        "",
    ]
    write_text_atomic(folder / "table.md", "\n".join(markdown))
    every = pd.concat(frames, ignore_index=True)
    every = every[["Card", *[c for c in every.columns if c != "Card"]]]
    write_text_atomic(folder / "table.csv", every.to_csv(index=False))
    write_text_atomic(folder / "table.json", every.to_json(orient="records", indent=2))
    (folder / "table.html").unlink(missing_ok=True)  # a single table's page from before the split
    return "\n".join(printed)
