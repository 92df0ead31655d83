"""Registry of engine descriptions: the settings each engine takes and how a cell is labelled.

A description never imports its engine; only the entrypoint that runs inside the
engine's own environment does (entrypoints/run_<engine>.py).
"""

from __future__ import annotations

from runner.engines.base import Engine, Setting
from runner.engines.ctranslate2 import CTRANSLATE2
from runner.engines.exllamav2 import EXLLAMAV2
from runner.engines.gptfast import GPTFAST
from runner.engines.llamacpp import LLAMACPP
from runner.engines.mlc import MLC
from runner.engines.transformers import TRANSFORMERS
from runner.engines.vllm import VLLM

ENGINES: dict[str, Engine] = {
    engine.name: engine for engine in (TRANSFORMERS, LLAMACPP, VLLM, EXLLAMAV2, GPTFAST, CTRANSLATE2, MLC)
}

__all__ = ["ENGINES", "Engine", "Setting"]
