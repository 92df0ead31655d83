"""Card kinds (matrix ``cards``): each GPU cell once per card, one baseline and one table per card.

The tables are rendered from real results committed under results/ (an H100 and an H200
run of the same baseline cell), so each card's Speed X is checked against its own baseline.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Any

import pytest

from runner.card_tables import render_by_card
from runner.errors import UserError
from runner.expand import Cell, expand, find_baselines
from runner.host import card_matches
from runner.matrix import parse_matrix

REPO = Path(__file__).resolve().parents[1]


def matrix_of(**top: Any):
    raw = {
        "version": 1,
        "model": {"synthetic": "tiny-mistral"},
        "defaults": {"gpus": [0], "timeout_s": 100},
        "baseline": {"engine": "transformers", "settings": {"dtype": "fp32"}},
        "engines": {
            "transformers": {"axes": {"dtype": ["fp32", "bf16"]}},
            "llamacpp": {"gpus": [], "include": [{"quant": "q8_0"}]},
        },
    }
    raw.update(top)
    return parse_matrix(raw, Path("cards-test.yaml"))


def test_each_gpu_cell_runs_once_per_card_and_the_cpu_cell_once():
    plain = expand(matrix_of())
    cells = expand(matrix_of(cards=["H100", "H200"]))
    gpu = [c for c in cells if c.gpus]
    assert [(c.settings["dtype"], c.card) for c in gpu] == [
        ("fp32", "H100"), ("fp32", "H200"), ("bf16", "H100"), ("bf16", "H200"),
    ]  # fmt: skip
    assert len({c.id for c in cells}) == len(cells) == 5
    (cpu,) = [c for c in cells if not c.gpus]
    assert cpu.card is None and cpu.id in {c.id for c in plain}  # a CPU cell is the same cell with or without cards
    assert all(c.card is None for c in plain)  # without cards the ids are the ones results were saved under
    assert not {c.id for c in gpu} & {c.id for c in plain}
    assert all(c.to_json()["card"] == c.card for c in cells)


def test_each_card_has_its_own_baseline():
    matrix = matrix_of(cards=["H100", "H200"])
    baselines = find_baselines(matrix, expand(matrix))
    assert sorted(baselines) == ["H100", "H200"]
    assert all(b.card == card and b.settings["dtype"] == "fp32" for card, b in baselines.items())
    plain = matrix_of()
    (only,) = find_baselines(plain, expand(plain)).values()
    assert only.card is None and only.settings["dtype"] == "fp32"


@pytest.mark.parametrize(
    ("cards", "said"),
    [
        ("H100", "expected a list of card kinds such as [H100, H200], got 'H100'"),
        ([], "expected a list of card kinds such as [H100, H200], got []"),
        (["H100", "H100"], "names a card twice; list each card once"),
        (["H100 80GB"], "'H100 80GB' is not a card kind; use Ray's accelerator type names"),
    ],
)
def test_a_bad_cards_list_is_one_line_naming_the_key(cards, said):
    with pytest.raises(UserError) as caught:
        matrix_of(cards=cards)
    message = str(caught.value)
    assert message.startswith("cards-test.yaml: cards: ") and said in message and "\n" not in message


def test_card_names_match_gpu_names_as_ray_spells_them():
    assert card_matches("H100", "NVIDIA H100 80GB HBM3")
    assert card_matches("h200", "NVIDIA H200")
    assert card_matches("A100", "NVIDIA A100-SXM4-80GB")
    assert card_matches("RTX-PRO-6000", "NVIDIA RTX PRO 6000 Blackwell Server Edition")
    assert not card_matches("H20", "NVIDIA H200")
    assert not card_matches("H100", "NVIDIA GeForce RTX 4090")


def _result(path: str, card: str | None) -> dict[str, Any]:
    result = json.loads((REPO / path).read_text())
    result["cell"] = {**result["cell"], "card": card, "id": f"{result['cell']['id']}-{card or 'cpu'}"}
    return result


def _cell(result: dict[str, Any]) -> Cell:
    c = result["cell"]
    return Cell(c["id"], c["engine"], c["settings"], tuple(c["gpus"]), c["timeout_s"], card=c["card"])


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as table:
        return list(csv.DictReader(table))


def test_one_table_per_card_each_against_its_own_baseline(tmp_path):
    """Real H100 and H200 results of the same baseline cell, each card's table dividing by its own."""
    h100_base = _result("results/h100/transformers/cells/transformers-00eee0f9ada1.json", "H100")
    h100_bf16 = _result("results/h100/transformers/cells/transformers-e1149e91e6db.json", "H100")
    h200_base = _result("results/h200/vllm/cells/transformers-00eee0f9ada1.json", "H200")
    h200_vllm = _result("results/h200/vllm/cells/vllm-9f9f543ea0f8.json", "H200")
    cpu_row = copy.deepcopy(h100_bf16)  # a CPU row: no card ran it, its own table
    cpu_row["cell"] = {**cpu_row["cell"], "gpus": [], "card": None, "id": "transformers-cpu-row"}
    results = [h100_base, h100_bf16, h200_base, h200_vllm, cpu_row]
    baselines = {"H100": _cell(h100_base), "H200": _cell(h200_base)}

    printed = render_by_card(results, baselines, tmp_path)

    def tps(r):
        return r["metrics"]["tokens_per_s"]["median"]

    h100 = _rows(tmp_path / "cards" / "H100" / "table.csv")
    assert [float(r["Speed X"]) for r in h100] == pytest.approx([1.0, tps(h100_bf16) / tps(h100_base)])
    h200 = _rows(tmp_path / "cards" / "H200" / "table.csv")
    assert [float(r["Speed X"]) for r in h200] == pytest.approx([1.0, tps(h200_vllm) / tps(h200_base)])
    assert tps(h100_base) != pytest.approx(tps(h200_base))  # the two baselines differ: dividing by one would show
    (cpu,) = _rows(tmp_path / "cards" / "cpu" / "table.csv")
    assert cpu["Speed X"] == ""
    assert "the baseline runs on each card kind" in (tmp_path / "cards" / "cpu" / "table.md").read_text()
    for card in ("H100", "H200", "cpu"):
        assert (tmp_path / "cards" / card / "table.html").is_file()
    h100_md = (tmp_path / "cards" / "H100" / "table.md").read_text()
    assert "NVIDIA H100" in h100_md and "NVIDIA H200" not in h100_md

    index = (tmp_path / "table.md").read_text()
    assert "- [H100](cards/H100/table.md): 2 rows; measured on NVIDIA H100 80GB HBM3" in index
    assert "- [H200](cards/H200/table.md): 2 rows; measured on NVIDIA H200" in index
    assert "- [cpu](cards/cpu/table.md): 1 rows" in index
    every = _rows(tmp_path / "table.csv")
    assert [r["Card"] for r in every] == ["H100", "H100", "H200", "H200", "cpu"]
    assert not (tmp_path / "table.html").exists()
    assert "== H100" in printed and "== H200" in printed


def test_a_run_without_cards_keeps_its_single_table(tmp_path):
    base = json.loads((REPO / "results/h100/transformers/cells/transformers-00eee0f9ada1.json").read_text())
    other = json.loads((REPO / "results/h100/transformers/cells/transformers-e1149e91e6db.json").read_text())
    render_by_card([base, other], {None: _cell({**base, "cell": {**base["cell"], "card": None}})}, tmp_path)
    assert not (tmp_path / "cards").exists()
    rows = _rows(tmp_path / "table.csv")
    assert "Card" not in rows[0] and float(rows[0]["Speed X"]) == pytest.approx(1.0)
    assert (tmp_path / "table.html").is_file()
