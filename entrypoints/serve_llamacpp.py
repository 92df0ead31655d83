"""llama.cpp's own server (llama-server) for a serving cell, from the same build and GGUF as the offline cells.

The GGUF is made (or found) by llamacpp_gguf exactly as for run_llamacpp.py;
llama-server is the binary that build-llama-cpp.sh laid out beside llama-bench
(``LLAMA_CPP_HOME/bin``). Slots (``--parallel``) default to the sweep's highest
concurrency, so no level queues inside the server unless the matrix asks for
fewer; each slot gets a context of prompt + new tokens rounded up to 256
(``--ctx-size`` is the total llama-server divides among its slots). Requests ask
for exactly N tokens with ``max_tokens`` and ``ignore_eos`` (llama-server's own
sampling parameter), so the end token cannot stop a request early.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import harness
import llamacpp_gguf
from serving import serve


class LlamaCppServer:
    health_path = "/health"

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.settings = spec["cell"]["settings"]
        self.workload = spec["workload"]
        self.gguf: Path | None = None
        self.toolchain = llamacpp_gguf.Toolchain.from_environment()

    def prepare(self) -> dict[str, Any]:
        derived = self.spec["model"].get("derived_dir")
        if not derived:
            raise RuntimeError("the spec names no store folder for the GGUF (model.derived_dir)")
        self.gguf, record = llamacpp_gguf.gguf_for(self.spec["model"], self.settings["quant"], Path(derived))
        return record

    def slots(self) -> int:
        return self.settings["parallel"] or max(self.workload["levels"])

    def command(self, port: int) -> list[str]:
        s = self.settings
        per_request = s["n_ctx"] or harness.round_up(self.workload["prompt_tokens"] + self.workload["new_tokens"], 256)
        command = [
            str(self.toolchain.home / "bin" / "llama-server"),
            "--model", str(self.gguf),
            "--host", "127.0.0.1", "--port", str(port),
            "--alias", self.spec["model"]["name"],
            "--parallel", str(self.slots()),
            "--ctx-size", str(per_request * self.slots()),
            "--batch-size", str(s["n_batch"]), "--ubatch-size", str(s["n_ubatch"]),
            "--flash-attn", "on" if s["flash_attn"] else "off",
            "--cont-batching" if s["cont_batching"] else "--no-cont-batching",
            "--no-webui",
            "--metrics",  # its Prometheus counters at /metrics, which the load generator reads through each level
        ]  # fmt: skip
        if self.spec["cell"]["gpus"]:
            command += ["--n-gpu-layers", str(s["n_gpu_layers"]), "--split-mode", s["split_mode"]]
            command += ["--main-gpu", str(s["main_gpu"])]
            if s["tensor_split"]:
                command += ["--tensor-split", ",".join(f"{v:g}" for v in s["tensor_split"])]
            if not s["offload_kqv"]:
                command.append("--no-kv-offload")
        else:
            command += ["--n-gpu-layers", "0"]
        threads = s["n_threads"] or len(harness.cell_cpus())
        command += ["--threads", str(threads), "--threads-batch", str(threads)]
        if s["cache_ram_mib"] is not None:
            command += ["--cache-ram", str(s["cache_ram_mib"])]
        return command

    def versions(self) -> dict[str, Any]:
        return {"llama.cpp build": self.toolchain.build_info}


if __name__ == "__main__":
    sys.exit(serve(LlamaCppServer))
