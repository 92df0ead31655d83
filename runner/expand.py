"""Turn a parsed matrix into cells: a pure function, tested against literal lists.

For each engine: the cartesian product of its axes, minus cells matching an
exclude pattern, plus the include cells; each setting not given takes the
engine's default, the engine's cross-setting check runs, and duplicates collapse.
A cell's id hashes everything that defines its measurement (engine, settings,
GPUs, model, workload, and the card kind where the matrix names cards), so a
result file is reused only for the same cell. With ``cards``, each GPU cell is
made once per card; CPU cells once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, replace
from typing import Any

from runner.engines import ENGINES, Engine
from runner.errors import UserError
from runner.matrix import EngineBlock, Matrix


@dataclass(frozen=True)
class Cell:
    id: str
    engine: str
    settings: dict[str, Any]
    gpus: tuple[int, ...]
    timeout_s: int
    batch_size: int = 1
    engine_version: str | None = None  # None: the pinned release
    card: str | None = None  # the card kind it must run on (matrix cards); None: any

    @property
    def label(self) -> list[str]:
        batch = [f"batch_size={self.batch_size}"] if self.batch_size != 1 else []
        version = [f"{self.software} {self.engine_version}"] if self.engine_version else []
        return version + ENGINES[self.engine].label(self.settings) + batch

    @property
    def software(self) -> str:
        return ENGINES[self.engine].software

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "engine": self.engine,
            "software": self.software,
            "settings": self.settings,
            "label": self.label,
            "gpus": list(self.gpus),
            "timeout_s": self.timeout_s,
            "batch_size": self.batch_size,
            "engine_version": self.engine_version,
            "card": self.card,
        }

    def workload(self, matrix: Matrix) -> dict[str, Any]:
        """The matrix's workload with this cell's batch size."""
        return {**matrix.workload.__dict__, "batch_size": self.batch_size}


def cell_id(
    engine: str,
    settings: dict[str, Any],
    gpus: tuple[int, ...],
    matrix: Matrix,
    batch_size: int,
    engine_version: str | None = None,
    card: str | None = None,
) -> str:
    identity: dict[str, Any] = {
        "engine": engine,
        "settings": settings,
        "gpus": list(gpus),
        "model": matrix.model.identity(),
        "workload": {**matrix.workload.identity(), "batch_size": batch_size},
    }
    if engine_version:  # only when named, so cells on the pinned release keep their ids
        identity["engine_version"] = engine_version
    if card:  # likewise: cells of a matrix without cards keep theirs
        identity["card"] = card
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"{engine}-{digest[:12]}"


def _matches(settings: dict[str, Any], pattern: dict[str, Any]) -> bool:
    return all(settings.get(key) == value for key, value in pattern.items())


def _product(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    if not axes:
        return []
    names = list(axes)
    return [dict(zip(names, values, strict=False)) for values in itertools.product(*(axes[n] for n in names))]


def expand(matrix: Matrix) -> list[Cell]:
    cells: dict[str, Cell] = {}
    for name, block in matrix.engines.items():
        for cell in block_cells(matrix, name, block, ENGINES[name], "engines"):
            for each in on_cards(matrix, cell):
                cells.setdefault(each.id, each)
    return list(cells.values())


def on_cards(matrix: Matrix, cell: Cell) -> list[Cell]:
    """The cell once per card kind of the matrix (a GPU cell), else the cell itself."""
    if not matrix.cards or not cell.gpus:
        return [cell]
    return [
        replace(
            cell,
            id=cell_id(cell.engine, cell.settings, cell.gpus, matrix, cell.batch_size, cell.engine_version, card),
            card=card,
        )
        for card in matrix.cards
    ]


def block_cells(
    matrix: Matrix, name: str, block: EngineBlock, engine: Engine, section: str, make_id=None
) -> list[Cell]:
    """One engine block's cells: its axes' product less the excluded, then its includes.

    make_id(engine name, settings, gpus, batch size, engine version) names each cell (default: cell_id).
    """
    make_id = make_id or (lambda *args: cell_id(*args[:3], matrix, *args[3:]))
    product = [c for c in _product(block.axes) if not any(_matches(engine.resolve(c), p) for p in block.exclude)]
    if not product and not block.include:
        raise UserError(f"{matrix.path}: {section}.{name}: every cell was excluded; loosen 'exclude' or add 'include'")
    cells = []
    for entry in product + block.include:
        overrides = {k: v for k, v in entry.items() if k in engine.settings}
        settings = engine.resolve(overrides)
        gpus = tuple(entry.get("gpus", block.placement.gpus))
        problem = engine.check(settings, gpus)
        if problem:
            raise UserError(f"{matrix.path}: {section}.{name}: cell {overrides}: {problem}")
        timeout = entry.get("timeout_s", block.placement.timeout_s)
        batch = entry.get("batch_size") or block.placement.batch_size or matrix.workload.batch_size
        version = entry.get("engine_version") or block.placement.engine_version
        cid = make_id(name, settings, gpus, batch, version)
        cells.append(Cell(cid, name, settings, gpus, timeout, batch, version))
    return cells


def find_baseline(matrix: Matrix, cells: list[Cell]) -> Cell:
    """The cell the table compares against: the matrix's baseline, or the first cell (with cards: the first
    card's; find_baselines gives each card's)."""
    return next(iter(find_baselines(matrix, cells).values()))


def find_baselines(matrix: Matrix, cells: list[Cell]) -> dict[str | None, Cell]:
    """The baseline of each card kind (key None without cards, or for a baseline that runs on the CPU)."""
    if matrix.baseline is None:
        first = cells[0]
        return {c.card: c for c in cells if c.id == first.id or _same_cell(c, first)}
    wanted = matrix.baseline
    found = [c for c in cells if c.engine == wanted.engine and _matches(c.settings, wanted.settings)]
    kinds = len({c.card for c in found})
    if not found or len(found) != kinds:
        count = "no cell" if not found else f"{len(found) // kinds} cells"
        raise UserError(
            f"{matrix.path}: baseline: {count} of engine {wanted.engine!r} match {wanted.settings}; "
            "give settings that pick exactly one cell"
        )
    return {c.card: c for c in found}


def _same_cell(a: Cell, b: Cell) -> bool:
    """The same cell on another card."""
    return (a.engine, a.settings, a.gpus, a.batch_size, a.engine_version) == (
        b.engine, b.settings, b.gpus, b.batch_size, b.engine_version
    )  # fmt: skip
