"""Command line.

    python -m runner MATRIX [options]          run a matrix (default command)
    python -m runner build [ENGINE ...]        build engine images
    python -m runner images --render|--check   regenerate / verify images/*/Dockerfile*

The run is a short pipeline: load the matrix, expand cells, pick the ones asked
for, choose the executor, prepare images and the model, run the cells, render
the table, choose the exit code. User mistakes print one line and exit 1; bugs
print a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

from runner import cpuset, interrupts, raw_archive
from runner.build import BuildOptions, ensure_images, image_spec
from runner.card_tables import render_by_card
from runner.compare import parse_compare_args, run_compare
from runner.errors import UserError
from runner.executors import EXECUTORS, make_executor
from runner.executors.docker import daemon_problem, image_exists, require_daemon
from runner.expand import Cell, expand, find_baselines
from runner.images import FLAVOURS, image_tag, load_specs, offers_cuda, stale_dockerfiles, write_dockerfiles
from runner.job import Executor, ExecutorOptions
from runner.matrix import Matrix, load_matrix
from runner.models.resolve import DEFAULT_STORE, resolve_model
from runner.results import FAILURES, read_result
from runner.run_lock import run_folder_lock
from runner.serving.agreement import level_folder, with_pooled
from runner.serving.loadgen import find_aiperf, server_reads
from runner.serving.session import run_serving_cells, server_label, serving_cells
from runner.serving.table import render_serving
from runner.session import cell_paths, refresh_log_facts, run_cells
from runner.shared import write_json_atomic


def _build_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("image builds (docker executor and the build command)")
    group.add_argument(
        "--base-image",
        action="append",
        default=[],
        metavar="[FLAVOUR=]IMAGE",
        help="base image instead of the pinned default, e.g. cpu=my/debian:bookworm "
        "(env BENCH_BASE_IMAGE_CPU / BENCH_BASE_IMAGE_GPU)",
    )
    group.add_argument(
        "--ca-bundle",
        type=Path,
        default=os.environ.get("BENCH_CA_BUNDLE") or None,
        help="extra CA certificates (PEM) for HTTPS inside builds, e.g. behind a TLS-inspecting proxy "
        "(env BENCH_CA_BUNDLE); used by the builder stage only, never left in the image",
    )
    group.add_argument(
        "--wheels",
        type=Path,
        default=os.environ.get("BENCH_WHEELS") or None,
        help="folder of local wheels builds may install from, e.g. a CPU torch (env BENCH_WHEELS)",
    )
    group.add_argument(
        "--build-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra docker build argument (env BENCH_BUILD_ARGS: several, space-separated)",
    )
    group.add_argument("--build-network", help="docker build --network (e.g. host, to reach a proxy on localhost)")
    group.add_argument(
        "--cuda",
        default=os.environ.get("BENCH_CUDA") or None,
        metavar="MAJOR.MINOR",
        help="GPU images on torch's CUDA MAJOR.MINOR wheels where an image offers them (image.yaml cuda_variants), "
        "e.g. 12.8 for a driver older than 580; the tag changes with it (env BENCH_CUDA)",
    )
    group.add_argument(
        "--prune-builder",
        action="store_true",
        default=os.environ.get("BENCH_PRUNE_BUILDER", "") not in ("", "0"),
        help="remove each engine's builder stage after its build instead of keeping it as the build cache: "
        "several GB less disk per engine (the vLLM GPU builder is about 11 GB), a full install on the next "
        "build (env BENCH_PRUNE_BUILDER=1; CI sets it)",
    )
    group.add_argument(
        "--no-proxy-from-env",
        action="store_true",
        help="do not pass HTTP(S)_PROXY / NO_PROXY from the environment to builds",
    )


def build_options(args: argparse.Namespace) -> dict[str, BuildOptions]:
    """BuildOptions per flavour from the command line and environment."""
    bases = {f: os.environ.get(f"BENCH_BASE_IMAGE_{f.upper()}") or None for f in FLAVOURS}
    for item in args.base_image:
        flavour, _, image = item.rpartition("=")
        if flavour and flavour not in FLAVOURS:
            raise UserError(f"--base-image {item}: unknown flavour {flavour!r}; use cpu=IMAGE or gpu=IMAGE")
        for f in [flavour] if flavour else FLAVOURS:
            bases[f] = image
    extra = {}
    for item in os.environ.get("BENCH_BUILD_ARGS", "").split() + args.build_arg:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"--build-arg {item}: give NAME=VALUE")
        extra[name] = value
    return {
        f: BuildOptions(
            base_image=bases[f],
            ca_bundle=args.ca_bundle,
            wheels=args.wheels,
            network=args.build_network,
            build_args=extra,
            proxies_from_env=not args.no_proxy_from_env,
            cuda=args.cuda if f == "gpu" else None,
            keep_builder=not args.prune_builder,
        )
        for f in FLAVOURS
    }


def parse_run_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runner",
        description="Run an inference benchmark matrix.",
        epilog="other commands: `python -m runner build [ENGINE ...]` builds engine images; "
        "`python -m runner images --render|--check` regenerates or checks images/*/Dockerfile* "
        "(each takes --help)",
    )
    parser.add_argument("matrix", type=Path, help="matrix YAML file (see matrix.yaml)")
    parser.add_argument("-o", "--output", type=Path, help="run folder (default: runs/<matrix name>)")
    parser.add_argument(
        "--executor",
        choices=("auto", *sorted(EXECUTORS)),
        default=os.environ.get("BENCH_EXECUTOR", "auto"),
        help="where cells run: docker (one container per cell), local (a subprocess with this machine's "
        "engines), ray (each cell on a node of a Ray cluster, see --ray-address), auto (docker if a daemon "
        "answers, else local; the default; env BENCH_EXECUTOR)",
    )
    parser.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS") or None,
        metavar="HOST:PORT",
        help="ray: the cluster's address, as `ray start --head` prints it (env RAY_ADDRESS)",
    )
    parser.add_argument(
        "--ray-inner",
        choices=("local", "docker"),
        default="local",
        help="ray: how each node runs its cells: local (the node's Python and engines; the default) or docker "
        "(the engine's image, built on the node if missing)",
    )
    parser.add_argument("--python", help="local executor: interpreter that has the engines (default: this one)")
    parser.add_argument("--no-build", action="store_true", help="docker: refuse to run if an image is missing")
    parser.add_argument(
        "--loadgen",
        help="serving cells: the aiperf executable that drives the servers (default: .venv/aiperf's, from "
        "`make setup-aiperf`, else aiperf on PATH)",
    )
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
    parser.add_argument(
        "--force",
        action="store_true",
        help="re-measure cells that already have an ok result (and every level of a serving cell cut short)",
    )
    parser.add_argument(
        "--cpus",
        metavar="LIST",
        help="CPUs the CPU cells run on, pinned (taskset / docker --cpuset-cpus), e.g. 0-3 or 0,2; "
        f"default: every CPU this runner may use (here {cpuset.format_cpus(cpuset.available())})",
    )
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help=f"model store (default {DEFAULT_STORE})")
    parser.add_argument("--list", action="store_true", help="print the cells and exit")
    parser.add_argument(
        "--table-only", action="store_true", help="render the table from the results already in the run folder"
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 3 if a cell failed (timeout and oom too; not run here does not)"
    )
    _build_arguments(parser)
    return parser.parse_args(argv)


def parse_build_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runner build", description="Build engine images.")
    parser.add_argument("engines", nargs="*", help="engines to build (default: every engine under images/)")
    parser.add_argument(
        "--flavour",
        choices=("auto", "all", *FLAVOURS),
        default="auto",
        help="gpu, cpu, all, or auto: gpu on a host with an NVIDIA GPU, else cpu (the default)",
    )
    parser.add_argument(
        "--engine-version",
        metavar="VERSION",
        help="build the engine at this release instead of the image.yaml pin (e.g. vllm 0.23.0), as a cell's "
        "engine_version would",
    )
    parser.add_argument("--print-tag", action="store_true", help="print the tags and build nothing")
    _build_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _STOPPED_BY.clear()
    # a signal the runner was started with ignored (a nohup'd or background job's SIGINT) stays ignored
    stops = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {stop: signal.signal(stop, _interrupt) for stop in stops}
    code = _main(argv)
    for stop, handler in previous.items():
        # after a stop, further signals are ignored until the process has exited (Python's shutdown would
        # otherwise let a late second Ctrl-C kill it by signal, after everything was written)
        signal.signal(stop, signal.SIG_IGN if "signal" in _STOPPED_BY else handler)
    return code


def _main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["build"]:
            return _build(parse_build_args(argv[1:]))
        if argv[:1] == ["images"]:
            return _images(argv[1:])
        if argv[:1] == ["compare"]:
            return run_compare(parse_compare_args(argv[1:]))
        return _run(parse_run_args(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished cells are kept in the run folder; rerun to measure the rest", file=sys.stderr)
        return 128 + _STOPPED_BY.get("signal", signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM


_STOPPED_BY: dict[str, int] = {}


def _interrupt(signum: int, frame: object) -> None:
    """The first SIGINT / SIGTERM stops the run (KeyboardInterrupt); later ones are noted and ignored, so the
    runner can finish stopping its cells, recording their rows and rendering the table."""
    if "signal" in _STOPPED_BY:
        print("still stopping: the running cells' rows and the table are being written", file=sys.stderr, flush=True)
        return
    _STOPPED_BY["signal"] = signum
    interrupts.stop()  # KeyboardInterrupt now, or once a child being started is recorded (runner.interrupts)


def _images(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner images", description="Render or check the Dockerfiles.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--render", action="store_true", help="rewrite images/*/Dockerfile* from the template")
    mode.add_argument("--check", action="store_true", help="exit 1 if a committed Dockerfile is out of date")
    args = parser.parse_args(argv)
    specs = load_specs()
    if args.render:
        for path in write_dockerfiles(specs):
            print(f"wrote {path}")
        return 0
    stale = stale_dockerfiles(specs)
    if stale:
        names = ", ".join(str(p) for p in stale)
        raise UserError(f"out of date: {names}; run python -m runner images --render")
    print(f"{len(specs)} Dockerfiles up to date")
    return 0


def _host_has_gpu() -> bool:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True, stdin=subprocess.DEVNULL).returncode == 0


def _build(args: argparse.Namespace) -> int:
    specs = load_specs()
    engines = args.engines or sorted({engine for engine, _ in specs})
    unknown = [e for e in engines if not any(k[0] == e for k in specs)]
    if unknown:
        known = ", ".join(sorted({e for e, _ in specs}))
        raise UserError(f"build: unknown engine {unknown[0]!r}; images exist for {known}")
    flavours = {"all": FLAVOURS, "auto": ("gpu" if _host_has_gpu() else "cpu",)}.get(args.flavour, (args.flavour,))
    version = (args.engine_version,) if args.engine_version else ()
    wanted = {(e, f, *version) for e in engines for f in flavours if (e, f) in specs}
    if not wanted:
        raise UserError(f"build: {', '.join(engines)} has no {'/'.join(flavours)} flavour; try --flavour gpu")
    options = build_options(args)
    cuda = options["gpu"].cuda
    lacking = sorted(key[0] for key in wanted if key[1] == "gpu" and not offers_cuda(specs[key[:2]], cuda))
    if lacking:
        offered = "; ".join(
            f"{e} builds for CUDA {' or '.join([specs[(e, 'gpu')].cuda, *specs[(e, 'gpu')].cuda_variants])}"
            for e in lacking
        )
        raise UserError(f"--cuda {cuda}: {offered} (images/<engine>/image.yaml cuda_variants); drop --cuda for them")
    if args.print_tag:
        for key in sorted(wanted):
            spec, option = image_spec(specs, key, options[key[1]].cuda), options[key[1]]
            print(image_tag(spec, option.base_image, option.build_args))
        return 0
    require_daemon()
    tags = ensure_images(wanted, specs, options, build_missing=True, exists=image_exists)
    for key in sorted(tags):
        print(f"{key[0]} ({' '.join(key[1:])}): {tags[key]}")
    unwired = {key[0]: specs[key[:2]].not_wired for key in tags if specs[key[:2]].not_wired}
    for engine, why in sorted(unwired.items()):
        print(f"note: {engine}: {why}")
    return 0


ONLY_MISS_LISTS_AT_MOST = 40  # a --only that matches nothing lists the matrix's cells up to this many


def select(cells: list[Cell], only: list[str], matrix_path: Path | str = "MATRIX") -> list[Cell]:
    """The cells whose id, engine name, displayed software name or settings label contains any of only.

    A miss is an error that lists every cell with its label (or, in a very large matrix, says how many
    there are and how to list them)."""
    if not only:
        return cells
    text = {c.id: f"{c.id} {c.engine} {c.software} {' '.join(c.label)}".lower() for c in cells}
    chosen = [c for c in cells if any(o.lower() in text[c.id] for o in only)]
    if not chosen:
        engines = ", ".join(dict.fromkeys(f"{c.engine} ({c.software})" for c in cells))
        head = (
            f"--only {' '.join(only)}: no cell matches; give part of a cell id, an engine ({engines}) or a "
            "setting as --list shows it"
        )
        if len(cells) > ONLY_MISS_LISTS_AT_MOST:
            raise UserError(f"{head}; the matrix has {len(cells)} cells: python -m runner {matrix_path} --list")
        raise UserError("\n".join([f"{head}; its {len(cells)} cells:", *(f"  {cell_line(c)}" for c in cells)]))
    return chosen


def cell_line(cell: Cell) -> str:
    """One cell as --list shows it: id, GPUs (or cpu), software and settings."""
    where = ",".join(map(str, cell.gpus)) or "cpu"
    return f"{cell.id}  [{where}]  {cell.software}: {'; '.join(cell.label)}"


def _list(cells: list[Cell], baselines: dict[str | None, Cell]) -> None:
    marked = {b.id for b in baselines.values()}
    for cell in cells:
        card = f" [card {cell.card}]" if cell.card else ""
        print(cell_line(cell) + card + (" (baseline)" if cell.id in marked else ""))


def _executor(
    args: argparse.Namespace, chosen: list[Cell], folder: Path, tools: dict[str, str | None] | None = None
) -> Executor:
    """The executor this run uses, with a line saying which and why."""
    kind = args.executor
    if kind == "auto":
        problem = daemon_problem()
        kind = "local" if problem else "docker"
        why = f"no Docker daemon answered: {problem}" if problem else "a Docker daemon answered"
        print(f"executor: {kind} ({why}; choose with --executor)", flush=True)
    elif kind not in EXECUTORS:  # argparse checks --executor, not a default from BENCH_EXECUTOR
        raise UserError(f"BENCH_EXECUTOR={kind}: unknown executor; choose one of auto, {', '.join(sorted(EXECUTORS))}")
    if tools is not None and kind == "local":  # the tools' local executables
        tools = {name: find_aiperf(args.loadgen) if name == "aiperf" else path for name, path in tools.items()}
    elif tools and args.loadgen:
        print(f"note: --loadgen names a local executable; the {kind} executor runs images/aiperf", flush=True)
    options = ExecutorOptions(
        folder,
        chosen,
        args.python,
        build_options(args),
        build_missing=not args.no_build,
        tools=tools or {},
        ray_address=args.ray_address,
        ray_inner=args.ray_inner,
    )
    executor = make_executor(kind, options)
    for line in getattr(executor, "describe", list)():  # a cluster's nodes
        print(f"node {line}", flush=True)
    return executor


def _run(args: argparse.Namespace) -> int:
    matrix = load_matrix(args.matrix)
    cells = expand(matrix)
    baselines = find_baselines(matrix, cells) if cells else {}  # one per card kind (key None: no cards)
    serving = serving_cells(matrix)
    everything = select(cells + serving, args.only, args.matrix)
    chosen = [c for c in everything if c in cells]
    chosen_serving = [c for c in everything if c in serving]
    if args.list:
        _list(chosen, baselines)
        for cell in chosen_serving:
            print(f"{cell.id}  [{_where_short(cell)}]  {cell.software} server: {'; '.join(server_label(cell))}")
        return 0
    if args.parallel < 1:
        raise UserError("--parallel: give a number >= 1")
    args.cpu_set = cpuset.choose(args.cpus)
    folder = (args.output or Path("runs") / matrix.name).resolve()
    if args.table_only:
        if unpacked := raw_archive.unpack(folder):
            print(f"unpacked {', '.join(unpacked)} from {folder / raw_archive.ARCHIVE} (ignored by git there)")
        if serving:
            _serving_table(folder, matrix, serving, {})
        return _table(folder, cells, {}, baselines, refresh=True) if cells else 0
    model = resolve_model(matrix.model, args.store, matrix.path)  # a bad model leaves no run folder behind
    folder.mkdir(parents=True, exist_ok=True)
    with run_folder_lock(folder):
        if raw_archive.unpack(folder, keep_archive=False):  # new files must not land in ignored folders
            print(f"{folder}: raw files unpacked and {raw_archive.ARCHIVE} removed; pack it again once finished")
        code = _run_in(folder, args, matrix, cells, chosen, baselines, model) if chosen else 0
        if chosen_serving:
            code = max(code, _serve_in(folder, args, matrix, serving, chosen_serving, model))
        return code


def _where_short(cell: Cell) -> str:
    return ",".join(map(str, cell.gpus)) if cell.gpus else "cpu"


def _serve_in(
    folder: Path,
    args: argparse.Namespace,
    matrix: Matrix,
    serving: list[Cell],
    chosen: list[Cell],
    model: dict,
) -> int:
    """Run the chosen serving cells into folder, render the serving table, choose the exit code."""
    executor = _executor(args, chosen, folder, tools={"aiperf": None})
    where = executor.tools["aiperf"]  # its local executable, or its image
    print(f"{len(chosen)} serving cell(s), executor {executor.name}, load generator {where}", flush=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        results = run_serving_cells(matrix, chosen, model, folder, executor, where, args.cpu_set, force=args.force)
    except KeyboardInterrupt:  # what was measured stays: the invocation, the table of every cell with a result
        _manifest(folder, args, executor.name, matrix.path, chosen, None, started)
        _serving_table(folder, matrix, serving, {})
        raise
    _manifest(folder, args, executor.name, matrix.path, chosen, None, started)
    _serving_table(folder, matrix, serving, {r["cell"]["id"]: r for r in results})
    print(f"serving: {summary(results)}")
    failed = [r for r in results if r["status"] in FAILURES]
    return 3 if failed and args.strict else 0


def _serving_table(folder: Path, matrix: Matrix, serving: list[Cell], fresh: dict[str, dict]) -> None:
    shown = [
        r
        for c in serving
        if (r := fresh.get(c.id) or _stored_serving(folder, cell_paths(folder, c)["result_path"])) is not None
    ]
    if shown:
        print(render_serving(shown, matrix.serving.sweep.ttft_p99_ms, folder))
        print(f"\nserving table: {folder / 'serving.md'} ({len(shown)} of {len(serving)} serving cells have results)")


def _stored_serving(folder: Path, path: Path) -> dict | None:
    """A serving cell's stored result, with what its files give where it was stored without: the pooled TTFT
    comparison, and what reading the server's own metrics cost it."""
    result = read_result(path)
    if not result:
        return None
    for level in result.get("levels", []):
        if level.get("server_metrics") and "server_reads" not in level:
            level["server_reads"] = server_reads(level_folder(folder, result["cell"]["id"], level["level"]))
    return with_pooled(result, folder)


def _run_in(
    folder: Path,
    args: argparse.Namespace,
    matrix: Matrix,
    cells: list[Cell],
    chosen: list[Cell],
    baselines: dict[str | None, Cell],
    model: dict,
) -> int:
    """Run the chosen cells into folder (held by this runner), render the table, choose the exit code."""
    executor = _executor(args, chosen, folder)
    print(f"{len(chosen)} cell(s) from {args.matrix}, executor {executor.name}, results in {folder}", flush=True)
    if any(not c.gpus for c in chosen) and getattr(executor, "places_cells", False):
        print("CPU cells run on every CPU of the node that runs them (one cell per CPU Ray counts there)", flush=True)
    elif any(not c.gpus for c in chosen):
        print(f"CPU cells run on {cpuset.named(args.cpu_set)} (choose with --cpus)", flush=True)
    if args.parallel > 1 and any(not c.gpus for c in chosen):
        print("note: --parallel runs cells on disjoint GPUs at once; CPU cells still run one at a time", flush=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        results = run_cells(matrix, chosen, model, folder, executor, args.parallel, args.force, cpus=args.cpu_set)
    except KeyboardInterrupt:
        _manifest(folder, args, executor.name, matrix.path, chosen, baselines, started)
        with contextlib.suppress(UserError):
            _table(folder, cells, {}, baselines)
        if args.force:
            print("this run used --force: rerun without it to measure only the cells with no result", file=sys.stderr)
        raise
    _manifest(folder, args, executor.name, matrix.path, chosen, baselines, started)
    _table(folder, cells, {r["cell"]["id"]: r for r in results}, baselines)
    print(f"this run: {summary(results)}")
    failed = [r for r in results if r["status"] in FAILURES]
    return 3 if failed and args.strict else 0


def summary(results: list[dict]) -> str:
    """How the run's cells ended: ok, not run here (unsupported), and failed (failed, timeout, oom)."""
    ok = sum(r["status"] == "ok" for r in results)
    unsupported = sum(r["status"] == "unsupported" for r in results)
    return f"{ok} ok, {unsupported} not run here, {len(results) - ok - unsupported} failed"


def _table(
    folder: Path, cells: list[Cell], fresh: dict[str, dict], baselines: dict[str | None, Cell], refresh: bool = False
) -> int:
    """Render the table over every cell of the matrix that has a result, not only this invocation's.

    With refresh (--table-only), each result's engine_log is re-read from its cell log first.
    """
    shown = []
    for cell in cells:
        result = fresh.get(cell.id) or read_result(cell_paths(folder, cell)["result_path"])
        if result and refresh:
            result = refresh_log_facts(folder, cell, result)
        if result:
            shown.append(result)
    if not shown:
        raise UserError(f"{folder}: no results for this matrix's cells yet; run without --table-only first")
    print(render_by_card(shown, baselines, folder))
    print(f"\ntable: {folder / 'table.md'} ({len(shown)} of {len(cells)} cells have results)")
    return 0


def _manifest(
    folder: Path,
    args: argparse.Namespace,
    executor: str,
    matrix_path: Path,
    cells: list[Cell],
    baselines: dict[str | None, Cell] | None,
    started: str,
) -> None:
    manifest = read_manifest(folder / "run.json")
    manifest["invocations"].append(
        {
            "command": "python -m runner " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "matrix": str(matrix_path),
            "matrix_text": matrix_path.read_text(),
            "executor": executor,
            "started_at": started,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cells": [c.id for c in cells],
            "baseline": next(iter(baselines.values())).id if baselines else None,
            **({"baselines": {c: b.id for c, b in baselines.items()}} if baselines and len(baselines) > 1 else {}),
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
