"""Command line: python -m runner MATRIX [options].

The flow is a short pipeline: load the matrix, expand cells, pick the ones asked
for, prepare the model, run the cells, render the table, choose the exit code.
User mistakes print one line and exit 1; bugs print a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
import time
from pathlib import Path

from runner.errors import UserError
from runner.executors import EXECUTORS
from runner.expand import Cell, expand, find_baseline
from runner.matrix import load_matrix
from runner.models.resolve import DEFAULT_STORE, resolve_model
from runner.results import write_json_atomic
from runner.session import run_cells
from runner.table import render


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runner", description="Run an inference benchmark matrix.")
    parser.add_argument("matrix", type=Path, help="matrix YAML file (see matrix.yaml)")
    parser.add_argument("-o", "--output", type=Path, help="run folder (default: runs/<matrix name>)")
    parser.add_argument("--executor", choices=sorted(EXECUTORS), default="local", help="where cells run")
    parser.add_argument("--python", help="interpreter with the engines installed (local executor; default: this one)")
    parser.add_argument(
        "--parallel", type=int, default=1, metavar="N", help="run up to N cells at once on disjoint GPUs (default 1)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="run only cells whose id or settings label contains TEXT (repeatable)",
    )
    parser.add_argument("--force", action="store_true", help="re-measure cells that already have an ok result")
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help=f"model store (default {DEFAULT_STORE})")
    parser.add_argument("--list", action="store_true", help="print the cells and exit")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="render the table from the results already in the run folder; run nothing",
    )
    parser.add_argument("--strict", action="store_true", help="exit 3 if any cell did not succeed")
    return parser.parse_args(argv)


def select(cells: list[Cell], only: list[str]) -> list[Cell]:
    if not only:
        return cells
    text = {c.id: f"{c.id} {c.engine} {' '.join(c.label)}".lower() for c in cells}
    return [c for c in cells if any(o.lower() in text[c.id] for o in only)]


def _list(cells: list[Cell], baseline: Cell) -> None:
    for cell in cells:
        mark = " (baseline)" if cell.id == baseline.id else ""
        where = ",".join(map(str, cell.gpus)) or "cpu"
        print(f"{cell.id}  [{where}]  {cell.software}: {'; '.join(cell.label)}{mark}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished cells are kept in the run folder; rerun to measure the rest", file=sys.stderr)
        return 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    matrix = load_matrix(args.matrix)
    cells = expand(matrix)
    baseline = find_baseline(matrix, cells)
    chosen = select(cells, args.only)
    if args.list:
        _list(chosen, baseline)
        return 0
    if not chosen:
        raise UserError(f"--only {' '.join(args.only)}: no cell matches; see --list")
    if args.parallel < 1:
        raise UserError("--parallel: give a number >= 1")
    folder = (args.output or Path("runs") / matrix.name).resolve()
    if args.table_only:
        return _table(folder, cells, {}, baseline)
    folder.mkdir(parents=True, exist_ok=True)
    executor = EXECUTORS[args.executor](python=args.python)
    print(f"{len(chosen)} cell(s) from {args.matrix}, executor {executor.name}, results in {folder}", flush=True)
    model = resolve_model(matrix.model, args.store, matrix.path)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        results = run_cells(matrix, chosen, model, folder, executor, args.parallel, args.force)
    except KeyboardInterrupt:
        _manifest(folder, args, matrix.path, chosen, baseline, started)
        with contextlib.suppress(UserError):
            _table(folder, cells, {}, baseline)
        raise
    _manifest(folder, args, matrix.path, chosen, baseline, started)
    _table(folder, cells, {r["cell"]["id"]: r for r in results}, baseline)
    failed = [r for r in results if r["status"] != "ok"]
    print(f"this run: {len(results) - len(failed)} ok, {len(failed)} not ok")
    return 3 if failed and args.strict else 0


def _table(folder: Path, cells: list[Cell], fresh: dict[str, dict], baseline: Cell) -> int:
    """Render the table over every cell of the matrix that has a result, not only this invocation's."""
    shown = _all_results(folder, cells, fresh)
    if not shown:
        raise UserError(f"{folder}: no results for this matrix's cells yet; run without --table-only first")
    print(render(shown, baseline.id, folder))
    print(f"\ntable: {folder / 'table.md'} ({len(shown)} of {len(cells)} cells have results)")
    return 0


def _all_results(folder: Path, cells: list[Cell], fresh: dict[str, dict]) -> list[dict]:
    from runner.results import read_result
    from runner.session import cell_paths

    found = []
    for cell in cells:
        result = fresh.get(cell.id) or read_result(cell_paths(folder, cell)["result_path"])
        if result:
            found.append(result)
    return found


def _manifest(
    folder: Path, args: argparse.Namespace, matrix_path: Path, cells: list[Cell], baseline: Cell, started: str
) -> None:
    manifest = read_manifest(folder / "run.json")
    manifest["invocations"].append(
        {
            "command": "python -m runner " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "matrix": str(matrix_path),
            "matrix_text": matrix_path.read_text(),
            "executor": args.executor,
            "started_at": started,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cells": [c.id for c in cells],
            "baseline": baseline.id,
        }
    )
    write_json_atomic(folder / "run.json", manifest)


def read_manifest(path: Path) -> dict:
    """run.json: every invocation that wrote into this run folder, oldest first."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"invocations": []}
    return manifest if isinstance(manifest.get("invocations"), list) else {"invocations": []}
