"""What an engine description is: named settings with defaults and allowed values, plus labels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One knob of an engine. choices=None means any value of the given type."""

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    type: type | tuple[type, ...] | None = None

    def problem(self, value: Any) -> str | None:
        """Why value is not acceptable, or None."""
        if self.choices is not None and value not in self.choices:
            shown = ", ".join(repr(c) for c in self.choices)
            return f"{value!r} is not one of {shown}"
        if self.type is not None and (
            not isinstance(value, self.type) or (isinstance(value, bool) and self.type is int)
        ):
            return f"{value!r} is a {type(value).__name__}, expected {_type_name(self.type)}"
        return None


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def recorded_weights_bytes(result: dict[str, Any]) -> int | None:
    """The size of the model files an entrypoint loaded, where it recorded one (engine_details or prepare)."""
    for section in ("engine_details", "prepare"):
        found = (result.get(section) or {}).get("model_bytes")
        if isinstance(found, int | float) and found > 0:
            return int(found)
    return None


def harness_threads(result: dict[str, Any]) -> int | None:
    """The threads a cell computed with, as its harness recorded them (entrypoints/harness.py: threads)."""
    return (result.get("threads") or {}).get("compute")


@dataclass(frozen=True)
class ServerReference:
    """The engine's own serving benchmark, run beside its server after each level (the row's fidelity check)."""

    script: str  # its helper in entrypoints/, run in the cell's environment (Executor.run_in_cell)
    name: str  # how the table names it
    # (server url, served model name, tokenizer path, level, sweep, result JSON path, prompt seed) -> the script's
    # arguments; the result JSON holds the tool's own figures, and per request ("requests") where it gives them
    arguments: Callable[[str, str, str, int, dict[str, Any], str, int], list[str]]
    # the result JSON's output tokens per second and median TTFT (ms)
    output_key: str = "output_throughput"
    ttft_key: str = "median_ttft_ms"


@dataclass(frozen=True)
class OwnFigure:
    """A figure the server counts itself, from its Prometheus metrics (``/metrics``) as AIPerf scraped them through a
    level and reduced them to the level's measured window (warm-up excluded): the server's side of the row."""

    metric: str  # the metric's family name (a counter's without _total)
    stat: str  # which statistic of it: "total" (a counter's change over the window), "avg", "p50", ... (a histogram's)
    label: str  # how the table's Notes name it
    scale: float = 1.0  # to the unit below (seconds to ms: 1000)
    unit: str = ""  # a total is a count: none
    noted: bool = True  # shown in the level's Notes (every figure is kept in its result)


@dataclass(frozen=True)
class Server:
    """An engine's own server for serving cells (runner/serving): what runs it, how requests keep to N tokens."""

    entrypoint: str  # its script in entrypoints/ (over the shared entrypoints/serving.py), run as the cell
    settings: dict[str, Setting]  # server-only settings, beside the engine's own
    # fields every request carries beside max_tokens so that it returns exactly N tokens: fixed, or made
    # from N where the fields must name it (extras() gives them for a sweep)
    request_extras: dict[str, Any] | Callable[[int], dict[str, Any]]
    forced_length: str  # how the server keeps to N tokens (or why it cannot), for the table's Notes
    helpers: tuple[str, ...] = ()  # its files beside it in entrypoints/
    reference: ServerReference | None = None
    # the load generator's connections: "pooled" (kept alive, as clients do) or "never" (one per request),
    # for a server that closes a connection after each streamed response
    connections: str = "pooled"
    # the engine's settings its server cannot honour: (settings) -> why and what to do, or None
    check: Callable[[dict[str, Any]], str | None] = field(default=lambda settings: None)
    # what the server counts itself, kept beside each level (level["server_metrics"]); none: AIPerf reads no metrics
    own_figures: dict[str, OwnFigure] = field(default_factory=dict)

    @property
    def lengths_vary(self) -> bool:
        """Whether each request can ask for a length of its own (max_tokens alone sets it): not where the fields
        every request carries must name N themselves."""
        return not callable(self.request_extras)

    def extras(self, new_tokens: int) -> dict[str, Any]:
        """The request fields for a sweep of new_tokens per request."""
        return self.request_extras(new_tokens) if callable(self.request_extras) else dict(self.request_extras)


@dataclass(frozen=True)
class Engine:
    """An inference engine the matrix can use: everything the runner knows about it, and nothing more.

    A description declares; it never imports its engine (that happens only in the
    entrypoint, inside the engine's environment) nor anything heavy, so the runner
    can list, validate and label cells on any machine.
    """

    name: str
    software: str
    entrypoint: str  # its script in entrypoints/, run as the cell
    settings: dict[str, Setting]
    label: Callable[[dict[str, Any]], list[str]]
    # The entrypoint's own files beside it in entrypoints/ (helpers and their data): its image copies
    # them with the entrypoint and the shared files (runner.images.entrypoint_files).
    helpers: tuple[str, ...] = ()
    # Settings other engines take that this one has no equivalent for: name -> why, and what to do
    # instead. A matrix naming one fails with that reason rather than an unknown-key hint.
    lacks: dict[str, str] = field(default_factory=dict)
    # Cross-setting check of one cell: (settings, gpus) -> why the cell is invalid, or None.
    check: Callable[[dict[str, Any], tuple[int, ...]], str | None] = field(default=lambda settings, gpus: None)
    # The kind of checkpoint a cell reads instead of the matrix's (settings -> kind, or None for the
    # matrix's own): made on the host by runner.models.derived, once per store.
    derived_checkpoint: Callable[[dict[str, Any]], str | None] = field(default=lambda settings: None)
    # Variables set for every cell of this engine, beside the shared safety ones (runner.shared).
    cell_env: dict[str, str] = field(default_factory=dict)
    # Prefixes of variables that switch this engine's behaviour: the harness records every such
    # variable a cell saw (with the safety variables) in the result.
    recorded_env_prefixes: tuple[str, ...] = ()
    # Facts the engine prints only in its log (it may run its model in other processes):
    # cell log text -> {name: [every value, in order]}; kept in the result as ``engine_log``.
    log_facts: Callable[[str], dict[str, list[Any]]] = field(default=lambda text: {})
    # Short notes for the table from one ok result (its engine_log, engine_details, prepare).
    notes: Callable[[dict[str, Any]], list[str]] = field(default=lambda result: [])
    # A failed cell's root cause, from its engine_log, when the error the harness caught only
    # points elsewhere (an engine that reports its worker's exception as "see stack trace above").
    failure_cause: Callable[[dict[str, list[Any]]], str | None] = field(default=lambda facts: None)
    # The CPU threads a cell computed with, from its result: what the harness recorded, unless the engine
    # says it only in its log (a worker process that binds its own threads).
    compute_threads: Callable[[dict[str, Any]], int | None] = field(default=harness_threads)
    # Its OpenAI-compatible server for serving cells, or None: such a cell fails validation, saying so.
    server: Server | None = None
    # The bytes of weights a decode step reads, as this engine stores them, from an ok result (the
    # roofline column, runner/roofline.py); None where the result does not tell.
    weights_bytes: Callable[[dict[str, Any]], int | None] = field(default=recorded_weights_bytes)

    @property
    def files(self) -> tuple[str, ...]:
        """Its files in entrypoints/: the entrypoint and its helpers, and its server's."""
        server = (self.server.entrypoint, *self.server.helpers) if self.server else ()
        if self.server and self.server.reference:
            server += (self.server.reference.script,)
        return (self.entrypoint, *self.helpers, *server)

    def resolve(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with the given settings (already validated by name)."""
        return {name: overrides.get(name, s.default) for name, s in self.settings.items()}
