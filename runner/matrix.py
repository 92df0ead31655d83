"""Parse and validate matrix.yaml in one place; every mistake is one line naming file, key and fix.

Schema (version 1):

    version: 1
    name: my-run                      # optional: names the default output folder
    model: {synthetic: shisa-7b-v1}   # or {id: org/name, revision: main} or {path: /ckpt}
    workload: {prompt_tokens: 64, new_tokens: 256, batch_size: 1, warmup: 1, repetitions: 3}
    defaults: {gpus: [0], timeout_s: 1800}
    cards: [H100, H200]               # optional: every GPU cell once per card kind, one table per card
    baseline: {engine: transformers, settings: {dtype: fp32}}
    engines:
      transformers:
        gpus: [0]                     # optional, overrides defaults
        axes: {dtype: [fp32, bf16]}   # cartesian product of settings
        exclude: [{dtype: fp32}]      # drop product cells matching every key
        include: [{dtype: fp16, gpus: [1]}]   # extra cells, added after exclude

    serving:                          # optional: serving cells (each engine's own server under load)
      levels: [1, 4, 16, 64]          # concurrency levels, swept in this order against one server
      requests: 64                    # requests per level (at least the level)
      duration_s: 0                   # optional: seconds per level: no new request after this long, or after
                                      # the requests, whichever comes first; 0: the requests alone
      rounds: 0                       # optional: at least rounds x the level per level (each slot busy that often)
      fidelity_runs: 1                # optional: at each level, the load generator and the engine's own serving
                                      # benchmark (where it has one) each run this often, alternating; row: the first
      warmup_requests: 4              # sent before each level, not counted
      prompt_tokens: 64               # per request (synthetic prompts, the checkpoint's tokenizer)
      new_tokens: 256                 # exactly, per request
      length_range_ratio: 0           # optional: each request's prompt and new tokens drawn uniformly from
                                      # [n(1-r), n(1+r)] (vllm bench serve's random range ratio, in both tools);
                                      # each request still returns exactly the new tokens it asks for
      server_metrics: false           # optional: AIPerf also reads the server's own metrics (/metrics) through
                                      # each level, 3 times a second (a request the server serves besides): what
                                      # it counted itself over the level (its TTFT, cache hits...) goes beside
                                      # the row, where its engine names them; off, the server serves only load
      ttft_p99_ms: 2000               # the summary row's bound: highest level with p99 TTFT under it
      server_timeout_s: 900           # how long the server may take to answer its health check
      engines: {llamacpp: {include: [{quant: f16}]}}   # as engines:, plus each server's own settings

A matrix may have serving and no engines (serving cells only).

cards names card kinds as Ray names them (its accelerator types: H100, H200,
A100, L4, ...). Each offline GPU cell is run once per card, the baseline too, and
the table is split into one table per card, each against its own baseline. The
ray executor places a card's cells on nodes of that kind; the local and docker
executors run a card's cells only where the cell's GPUs are of that kind (the
name appears in the GPU's name), and report the others as not run here.

batch_size and engine_version may also be given per engine, per include entry
or as an axis (``axes: {batch_size: [1, 8], engine_version: ["0.24.0", "0.23.0"]}``):
batch_size overrides the workload's for those cells; engine_version runs them on
that release of the engine (the docker executor builds one image per release).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from runner.engines import ENGINES, Engine
from runner.errors import UserError
from runner.models.architectures import ARCHITECTURES

SCHEMA_VERSION = 1
CELL_KEYS = ("gpus", "timeout_s", "batch_size", "engine_version")
AXIS_CELL_KEYS = ("batch_size", "engine_version")  # cell keys that may also be axes
DEFAULT_KEYS = ("gpus", "timeout_s")  # batch size: the workload's; an engine version belongs to one engine


@dataclass(frozen=True)
class ModelSpec:
    synthetic: str | None = None
    id: str | None = None
    revision: str | None = None
    path: str | None = None

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Workload:
    prompt_tokens: int = 64
    new_tokens: int = 256
    batch_size: int = 1
    warmup: int = 1
    repetitions: int = 3
    # adaptive repetitions: after `repetitions`, repeat while tok/s varies by more than target_cv_pct
    # (coefficient of variation), up to max_repetitions in all; None: exactly `repetitions`
    max_repetitions: int | None = None
    target_cv_pct: float = 5.0

    def identity(self) -> dict[str, Any]:
        """What a cell id hashes: the adaptive keys only when used (ids of fixed-count cells stay the same)."""
        found = dict(self.__dict__)
        if self.max_repetitions is None:
            del found["max_repetitions"], found["target_cv_pct"]
        return found


@dataclass(frozen=True)
class Placement:
    gpus: tuple[int, ...] = (0,)
    timeout_s: int = 1800
    batch_size: int | None = None  # None: the workload's
    engine_version: str | None = None  # None: the image's (or environment's) pinned release


@dataclass(frozen=True)
class EngineBlock:
    axes: dict[str, list[Any]]
    include: list[dict[str, Any]]
    exclude: list[dict[str, Any]]
    placement: Placement


@dataclass(frozen=True)
class Baseline:
    engine: str
    settings: dict[str, Any]


@dataclass(frozen=True)
class Sweep:
    """A serving workload: one server per cell, swept through concurrency levels (runner/serving)."""

    levels: tuple[int, ...] = (1, 4, 16, 64)
    requests: int = 64
    rounds: int = 0  # requests per level are at least rounds x the level (0: requests alone)
    duration_s: float = 0.0  # a level also ends this many seconds after it started sending (0: by requests alone)
    fidelity_runs: int = 1  # runs of each tool per level where the engine has its own serving benchmark
    warmup_requests: int = 4
    prompt_tokens: int = 64
    new_tokens: int = 256
    length_range_ratio: float = 0.0  # r: lengths drawn per request from [n(1-r), n(1+r)]; 0: every request n
    server_metrics: bool = False  # AIPerf reads the server's own metrics through each level (Server.own_figures)
    ttft_p99_ms: float = 2000.0
    server_timeout_s: int = 900

    def identity(self) -> dict[str, Any]:
        """What a serving cell's id hashes (the TTFT bound only reads results, so it is left out)."""
        found = {**self.__dict__, "levels": list(self.levels)}
        del found["ttft_p99_ms"]
        if not self.rounds:
            del found["rounds"]  # unset: the ids of serving cells from before it existed stay as they were
        if self.fidelity_runs == 1:
            del found["fidelity_runs"]  # likewise
        if not self.length_range_ratio:
            del found["length_range_ratio"]  # likewise
        if not self.duration_s:
            del found["duration_s"]  # likewise
        if not self.server_metrics:
            del found["server_metrics"]  # likewise
        return found


@dataclass(frozen=True)
class Serving:
    sweep: Sweep
    engines: dict[str, EngineBlock]


@dataclass(frozen=True)
class Matrix:
    path: Path
    name: str
    model: ModelSpec
    workload: Workload
    engines: dict[str, EngineBlock]
    baseline: Baseline | None = None
    defaults: Placement = field(default_factory=Placement)
    serving: Serving | None = None
    cards: tuple[str, ...] = ()  # card kinds each GPU cell runs on (one table per card); () = wherever it runs


class _Where:
    """Builds error messages for one file."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str) -> UserError:
        return UserError(f"{self.path}: {key}: {problem}")

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__} {value!r}")
        return value

    def known(self, table: dict[str, Any], key: str, allowed: list[str] | tuple[str, ...]) -> None:
        for name in table:
            if name not in allowed:
                hint = difflib.get_close_matches(str(name), list(allowed), n=1)
                suggestion = f"did you mean '{hint[0]}'?" if hint else f"valid keys: {', '.join(sorted(allowed))}"
                raise self.fail(f"{key}.{name}" if key else str(name), f"unknown key; {suggestion}")

    def integer(self, table: dict[str, Any], key: str, name: str, default: int, minimum: int) -> int:
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(f"{key}.{name}", f"expected an integer >= {minimum}, got {value!r}")
        return value

    def boolean(self, table: dict[str, Any], key: str, name: str, default: bool) -> bool:
        value = table.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(f"{key}.{name}", f"expected true or false, got {value!r}")
        return value

    def number(
        self, table: dict[str, Any], key: str, name: str, default: float, valid: Callable[[float], bool], expected: str
    ) -> float:
        """table[name] (or default) as a float, if it is a number valid() accepts; else `expected, got ...`."""
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not valid(value):
            raise self.fail(f"{key}.{name}", f"{expected}, got {value!r}")
        return float(value)


def load_matrix(path: str | Path) -> Matrix:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass the path of a matrix YAML file (see matrix.yaml)")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: byte {exc.start}: not UTF-8 text; save the file as UTF-8") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to read; a matrix is a few levels of mappings and lists") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}" if mark else f"position {getattr(exc, 'position', '?')}"
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise UserError(f"{path}: {where}: not valid YAML ({problem})") from None
    return parse_matrix(raw, path)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (YAML would keep the last silently)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice; merge the two entries", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def parse_matrix(raw: Any, path: Path) -> Matrix:
    w = _Where(path)
    top = w.mapping(raw if raw is not None else {}, "(top level)")
    w.known(top, "", ("version", "name", "model", "workload", "defaults", "cards", "baseline", "engines", "serving"))
    if "version" not in top:
        raise w.fail("version", f"missing; add 'version: {SCHEMA_VERSION}' at the top")
    if isinstance(top["version"], bool) or top["version"] != SCHEMA_VERSION:
        raise w.fail("version", f"unsupported version {top['version']!r}; this runner reads version {SCHEMA_VERSION}")
    for required in ("model", "engines"):
        if required not in top and not (required == "engines" and "serving" in top):
            raise w.fail(required, "missing; see matrix.yaml for an example")
    defaults_table = w.mapping(top.get("defaults", {}), "defaults")
    w.known(defaults_table, "defaults", DEFAULT_KEYS)
    defaults = _placement(w, defaults_table, "defaults", Placement())
    engines = _engines(w, w.mapping(top["engines"], "engines"), defaults) if "engines" in top else {}
    if "baseline" in top and not engines:
        raise w.fail("baseline", "compares offline cells; this matrix has no engines: section")
    matrix = Matrix(
        path=path,
        name=_name(w, top.get("name"), path),
        model=_model(w, w.mapping(top["model"], "model")),
        workload=_workload(w, w.mapping(top.get("workload", {}), "workload")),
        engines=engines,
        baseline=_baseline(w, top.get("baseline"), engines),
        defaults=defaults,
        serving=_serving(w, w.mapping(top["serving"], "serving"), defaults) if "serving" in top else None,
        cards=_cards(w, top["cards"]) if "cards" in top else (),
    )
    return matrix


def _cards(w: _Where, given: Any) -> tuple[str, ...]:
    """Card kinds: a non-empty list of distinct names as Ray's accelerator types spell them (H100, RTX-PRO-6000)."""
    if not isinstance(given, list) or not given:
        raise w.fail("cards", f"expected a list of card kinds such as [H100, H200], got {given!r}")
    for card in given:
        if not isinstance(card, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", card):
            raise w.fail("cards", f"{card!r} is not a card kind; use Ray's accelerator type names (H100, A100, L4)")
    if len(set(given)) != len(given):
        raise w.fail("cards", f"{given!r} names a card twice; list each card once")
    return tuple(given)


def serving_engine(name: str) -> Engine | None:
    """The engine as its serving cells see it: its settings plus its server's, its server's entrypoint."""
    engine = ENGINES[name]
    if engine.server is None:
        return None
    server = engine.server
    return replace(
        engine,
        settings={**engine.settings, **server.settings},
        entrypoint=server.entrypoint,
        check=lambda settings, gpus: server.check(settings) or engine.check(settings, gpus),
    )


def _serving(w: _Where, table: dict[str, Any], defaults: Placement) -> Serving:
    w.known(table, "serving", (*Sweep.__dataclass_fields__, "engines"))
    d = Sweep()
    levels = table.get("levels", list(d.levels))
    if (
        not isinstance(levels, list)
        or not levels
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in levels)
    ):
        raise w.fail(
            "serving.levels", f"expected a non-empty list of concurrencies >= 1, like [1, 4, 16], got {levels!r}"
        )
    if len(set(levels)) != len(levels):
        raise w.fail("serving.levels", f"a level is listed twice in {levels!r}")
    sweep = Sweep(
        levels=tuple(levels),
        requests=w.integer(table, "serving", "requests", d.requests, 1),
        rounds=w.integer(table, "serving", "rounds", d.rounds, 0),
        duration_s=w.number(
            table,
            "serving",
            "duration_s",
            d.duration_s,
            lambda v: v >= 0,
            "expected seconds >= 0 per level (0: each level sends its requests and no time bound)",
        ),
        fidelity_runs=w.integer(table, "serving", "fidelity_runs", d.fidelity_runs, 1),
        server_metrics=w.boolean(table, "serving", "server_metrics", d.server_metrics),
        warmup_requests=w.integer(table, "serving", "warmup_requests", d.warmup_requests, 0),
        prompt_tokens=w.integer(table, "serving", "prompt_tokens", d.prompt_tokens, 1),
        new_tokens=w.integer(table, "serving", "new_tokens", d.new_tokens, 1),
        length_range_ratio=w.number(
            table,
            "serving",
            "length_range_ratio",
            d.length_range_ratio,
            lambda v: 0 <= v < 1,
            "expected a number from 0 up to (not including) 1, like 0.25 for lengths within 25 % of "
            "prompt_tokens and new_tokens",
        ),
        ttft_p99_ms=w.number(
            table, "serving", "ttft_p99_ms", d.ttft_p99_ms, lambda v: v > 0, "expected a number of milliseconds > 0"
        ),
        server_timeout_s=w.integer(table, "serving", "server_timeout_s", d.server_timeout_s, 1),
    )
    if "engines" not in table:
        raise w.fail("serving.engines", "missing; name the engines whose servers to sweep, e.g. 'llamacpp:'")
    engines_table = w.mapping(table["engines"], "serving.engines")
    if not engines_table:
        raise w.fail("serving.engines", "empty; name at least one engine with a server, e.g. 'llamacpp:'")
    w.known(engines_table, "serving.engines", tuple(ENGINES))
    blocks = {}
    for name, body in engines_table.items():
        engine = serving_engine(name)
        if engine is None:
            with_server = ", ".join(n for n in ENGINES if ENGINES[n].server) or "none yet"
            raise w.fail(
                f"serving.engines.{name}",
                f"{ENGINES[name].software} has no server this tool runs; engines with one: {with_server}",
            )
        if sweep.length_range_ratio and not ENGINES[name].server.lengths_vary:
            raise w.fail(
                f"serving.engines.{name}",
                f"{ENGINES[name].software}'s server keeps to N new tokens through request fields that name N "
                f"({ENGINES[name].server.forced_length}), the same in every request, so its requests cannot each "
                f"ask for a length of their own: sweep it in a matrix without serving.length_range_ratio",
            )
        blocks[name] = _engine_block(w, name, body, defaults, engine=engine, section="serving.engines")
        timeout = blocks[name].placement.timeout_s
        if sweep.duration_s * len(sweep.levels) >= timeout:
            raise w.fail(
                f"serving.engines.{name}",
                f"{len(sweep.levels)} levels of serving.duration_s {sweep.duration_s:g} s take at least "
                f"{sweep.duration_s * len(sweep.levels):g} s, past the cells' timeout_s {timeout}: raise timeout_s "
                "(defaults or the engine's) well above that, server start included, or shorten duration_s",
            )
    return Serving(sweep=sweep, engines=blocks)


def _name(w: _Where, given: Any, path: Path) -> str:
    """The run's default folder name (runs/<name>): a plain folder name, never a path."""
    if given is None:
        return path.stem
    if not isinstance(given, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", given):
        raise w.fail("name", f"{given!r} is not a plain folder name; use letters, digits, '.', '_' and '-' (or -o DIR)")
    return given


def _model(w: _Where, table: dict[str, Any]) -> ModelSpec:
    w.known(table, "model", ("synthetic", "id", "revision", "path"))
    sources = [k for k in ("synthetic", "id", "path") if k in table]
    if len(sources) != 1:
        raise w.fail("model", "give exactly one of 'synthetic: <architecture>', 'id: <hub id>' or 'path: <folder>'")
    for key, value in table.items():
        if not isinstance(value, str) or not value:
            raise w.fail(f"model.{key}", f"expected a non-empty string, got {value!r}")
    if "revision" in table and "id" not in table:
        raise w.fail("model.revision", "only applies to 'id:' (a hub model)")
    if "synthetic" in table and table["synthetic"] not in ARCHITECTURES:
        name = table["synthetic"]
        hint = difflib.get_close_matches(name, list(ARCHITECTURES), n=1)
        extra = f"did you mean '{hint[0]}'? " if hint else ""
        raise w.fail(
            "model.synthetic", f"unknown architecture {name!r}; {extra}known: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ModelSpec(**table)


def _workload(w: _Where, table: dict[str, Any]) -> Workload:
    w.known(table, "workload", tuple(Workload.__dataclass_fields__))
    d = Workload()
    return Workload(
        prompt_tokens=w.integer(table, "workload", "prompt_tokens", d.prompt_tokens, 1),
        new_tokens=w.integer(table, "workload", "new_tokens", d.new_tokens, 2),
        batch_size=w.integer(table, "workload", "batch_size", d.batch_size, 1),
        warmup=w.integer(table, "workload", "warmup", d.warmup, 0),
        repetitions=w.integer(table, "workload", "repetitions", d.repetitions, 1),
        **_adaptive(w, table),
    )


def _adaptive(w: _Where, table: dict[str, Any]) -> dict[str, Any]:
    """max_repetitions (>= repetitions) and target_cv_pct (> 0), checked together."""
    if "max_repetitions" not in table:
        if "target_cv_pct" in table:
            raise w.fail("workload.target_cv_pct", "only applies with max_repetitions; add max_repetitions: N")
        return {}
    repetitions = table.get("repetitions", Workload.repetitions)
    most = w.integer(table, "workload", "max_repetitions", repetitions, max(repetitions, 1))
    target = table.get("target_cv_pct", Workload.target_cv_pct)
    if isinstance(target, bool) or not isinstance(target, int | float) or target <= 0:
        raise w.fail("workload.target_cv_pct", f"expected a number > 0 (percent), got {target!r}")
    return {"max_repetitions": most, "target_cv_pct": float(target)}


def _gpus(w: _Where, value: Any, key: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or any(isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in value):
        raise w.fail(key, f"expected a list of GPU indices like [0] or [0, 1] ([] for CPU), got {value!r}")
    if len(set(value)) != len(value):
        raise w.fail(key, f"GPU listed twice in {value!r}")
    return tuple(value)


def _placement(w: _Where, table: dict[str, Any], key: str, base: Placement) -> Placement:
    gpus = _gpus(w, table["gpus"], f"{key}.gpus") if "gpus" in table else base.gpus
    timeout = w.integer(table, key, "timeout_s", base.timeout_s, 1)
    batch = w.integer(table, key, "batch_size", 1, 1) if "batch_size" in table else base.batch_size
    version = (
        _engine_version(w, table["engine_version"], f"{key}.engine_version")
        if "engine_version" in table
        else base.engine_version
    )
    return Placement(gpus=gpus, timeout_s=timeout, batch_size=batch, engine_version=version)


def _engine_version(w: _Where, value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip() or " " in value:
        raise w.fail(key, f'expected a release number such as "0.24.0" (quoted), got {value!r}')
    return value


def _engines(w: _Where, table: dict[str, Any], defaults: Placement) -> dict[str, EngineBlock]:
    if not table:
        raise w.fail("engines", "empty; name at least one engine, e.g. 'transformers:'")
    w.known(table, "engines", tuple(ENGINES))
    return {name: _engine_block(w, name, body, defaults) for name, body in table.items()}


def _engine_block(
    w: _Where, name: str, body: Any, defaults: Placement, engine: Engine | None = None, section: str = "engines"
) -> EngineBlock:
    """One engine's cells; engine: the description whose settings they take (default: ENGINES[name])."""
    key = f"{section}.{name}"
    body = w.mapping(body if body is not None else {}, key)
    w.known(body, key, ("axes", "include", "exclude", *CELL_KEYS))
    engine = engine or ENGINES[name]
    axes = dict(w.mapping(body.get("axes", {}), f"{key}.axes"))
    cell_axes = {axis: axes.pop(axis) for axis in AXIS_CELL_KEYS if axis in axes}
    _check_settings(w, engine, axes, f"{key}.axes", lists=True)
    for axis, values in cell_axes.items():
        if not isinstance(values, list) or not values:
            raise w.fail(f"{key}.axes.{axis}", f"expected a non-empty list of values, got {values!r}")
        for value in values:
            if axis == "batch_size":
                w.integer({axis: value}, f"{key}.axes", axis, 1, 1)
            else:
                _engine_version(w, value, f"{key}.axes.{axis}")
        axes[axis] = values
    include = _cell_list(w, engine, body.get("include", []), f"{key}.include", placement=True)
    exclude = _cell_list(w, engine, body.get("exclude", []), f"{key}.exclude", placement=False)
    if not axes and not include:
        raise w.fail(key, "no cells; give 'axes:' (settings to combine) or 'include:' (a list of cells)")
    return EngineBlock(axes=axes, include=include, exclude=exclude, placement=_placement(w, body, key, defaults))


def _cell_list(w: _Where, engine: Engine, value: Any, key: str, placement: bool) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise w.fail(key, f"expected a list of settings mappings, got {value!r}")
    cells = []
    for i, item in enumerate(value):
        item = dict(w.mapping(item if item is not None else {}, f"{key}[{i}]"))
        extra = {k: item.pop(k) for k in CELL_KEYS if k in item} if placement else {}
        _check_settings(w, engine, item, f"{key}[{i}]", lists=False)
        if "gpus" in extra:
            extra["gpus"] = _gpus(w, extra["gpus"], f"{key}[{i}].gpus")
        for name in ("timeout_s", "batch_size"):
            if name in extra:
                w.integer(extra, f"{key}[{i}]", name, 1, 1)
        if "engine_version" in extra:
            _engine_version(w, extra["engine_version"], f"{key}[{i}].engine_version")
        cells.append({**item, **extra})
    return cells


def _check_settings(w: _Where, engine: Engine, table: dict[str, Any], key: str, lists: bool) -> None:
    placed = [k for k in CELL_KEYS if k in table]
    if ".exclude[" in key and placed:
        raise w.fail(
            f"{key}.{placed[0]}", "exclude patterns match settings only; put it on an include entry or the engine"
        )
    for name in table:
        if name not in engine.settings and name in engine.lacks:
            raise w.fail(f"{key}.{name}", f"{engine.software} has no {name}: {engine.lacks[name]}")
    w.known(table, key, list(engine.settings))
    for name, value in table.items():
        values = value if lists else [value]
        if lists and (not isinstance(value, list) or not value):
            raise w.fail(f"{key}.{name}", f"expected a non-empty list of values, got {value!r}")
        for v in values:
            problem = engine.settings[name].problem(v)
            if problem:
                raise w.fail(f"{key}.{name}", problem)


def _baseline(w: _Where, value: Any, engines: dict[str, EngineBlock]) -> Baseline | None:
    if value is None:
        return None
    table = w.mapping(value, "baseline")
    w.known(table, "baseline", ("engine", "settings"))
    engine = table.get("engine")
    if engine not in engines:
        raise w.fail("baseline.engine", f"{engine!r} is not one of this matrix's engines ({', '.join(engines)})")
    settings = w.mapping(table.get("settings", {}), "baseline.settings")
    _check_settings(w, ENGINES[engine], settings, "baseline.settings", lists=False)
    return Baseline(engine=engine, settings=settings)
