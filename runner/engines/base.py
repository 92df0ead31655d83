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

    def resolve(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with the given settings (already validated by name)."""
        return {name: overrides.get(name, s.default) for name, s in self.settings.items()}
