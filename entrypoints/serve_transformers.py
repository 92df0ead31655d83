"""HF Transformers' own server (``transformers serve``) for a serving cell, with the offline cells' settings.

The server is what the ``transformers serve`` command starts, run as its module
(``python -m transformers.cli.transformers serve``) with the matrix's checkpoint
preloaded and pinned (its positional model argument: requests must then name
that same string as their model, which ``served_model`` tells the runner). The
offline settings it has flags for pass through: dtype (``--dtype``), attention
(``--attn-implementation``), bitsandbytes (``--quantization``) and compile
(``--compile``); the server-only ``continuous_batching`` is its
``--continuous-batching`` (a paged cache shared by the requests in flight;
without it each request runs its own generate()). The offline settings it has
no flag for are refused at validation (runner/engines/transformers.py).

It has no ``ignore_eos``: each request carries a ``generation_config`` (the
JSON the server builds its GenerationConfig from) with min_new_tokens =
max_new_tokens = N and greedy decoding, so the end token cannot stop it early;
the load generator's per-request token counts (the server's usage fields) show
whether that held. Serving needs ``transformers[serving]`` (fastapi, uvicorn,
openai), which the transformers image installs.
"""

from __future__ import annotations

import sys
from typing import Any

import harness
import run_transformers
from serving import serve


class TransformersServer:
    health_path = "/health"

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.settings = spec["cell"]["settings"]
        self.engine = run_transformers.Engine(spec)
        self.served_model = spec["model"]["path"]  # the server is pinned to the path it was given

    def prepare(self) -> dict[str, Any] | None:
        from transformers.utils.import_utils import is_serve_available

        if not is_serve_available():
            raise harness.CellUnsupported(
                "transformers serve needs transformers[serving] (fastapi, uvicorn, openai, pydantic), not installed "
                "here: use the transformers image, or `pip install 'transformers[serving]'`"
            )
        self.engine.check()
        return None

    def command(self, port: int) -> list[str]:
        s = self.settings
        command = [
            sys.executable, "-m", "transformers.cli.transformers", "serve", self.served_model,
            "--host", "127.0.0.1", "--port", str(port),
            "--device", "cuda:0" if self.engine.cuda else "cpu",
            "--dtype", str(run_transformers.DTYPES[s["dtype"]]).removeprefix("torch."),
            "--attn-implementation", s["attention"],
            "--continuous-batching" if s["continuous_batching"] else "--no-continuous-batching",
            "--log-level", "info",
        ]  # fmt: skip
        if s["quantization"] != "none":
            command += ["--quantization", s["quantization"]]
        if s["compile"]:
            command.append("--compile")
        return command

    def versions(self) -> dict[str, Any]:
        return self.engine.versions()


if __name__ == "__main__":
    sys.exit(serve(TransformersServer))
