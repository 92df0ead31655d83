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


@dataclass(frozen=True)
class Engine:
    """An inference engine the matrix can use."""

    name: str
    software: str
    entrypoint: str
    settings: dict[str, Setting]
    label: Callable[[dict[str, Any]], list[str]]
    # Cross-setting check of one cell: (settings, gpus) -> why the cell is invalid, or None.
    check: Callable[[dict[str, Any], tuple[int, ...]], str | None] = field(default=lambda settings, gpus: None)
    # The model record a cell reads, from the matrix's: (settings, model, log) -> model. An engine
    # whose setting needs another checkpoint (AWQ of a synthetic model) derives it here, host-side,
    # once per store; if that raises, the cell fails with the error and the matrix goes on.
    cell_model: Callable[[dict[str, Any], dict[str, Any], Callable[[str], None]], dict[str, Any]] = field(
        default=lambda settings, model, log: model
    )
    # Facts the engine prints only in its log (it may run its model in other processes):
    # cell log text -> {name: [every value, in order]}; kept in the result as ``engine_log``.
    log_facts: Callable[[str], dict[str, list[Any]]] = field(default=lambda text: {})
    # Short notes for the table from one ok result (its engine_log, engine_details).
    notes: Callable[[dict[str, Any]], list[str]] = field(default=lambda result: [])
    # A failed cell's root cause, from its engine_log, when the error the harness caught only
    # points elsewhere (vLLM's engine says "see stack trace above" for a worker's exception).
    failure_cause: Callable[[dict[str, list[Any]]], str | None] = field(default=lambda facts: None)

    def resolve(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with the given settings (already validated by name)."""
        return {name: overrides.get(name, s.default) for name, s in self.settings.items()}
