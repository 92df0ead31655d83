"""A reference OpenAI-compatible completions server whose timing is known: the yardstick for load generators.

Every streamed request gets its first token TTFT_MS after the handler received it and one
more token every ITL_MS after that (scheduled against the arrival, so delays do not add
up), exactly max_tokens tokens, then a usage chunk (as vLLM sends with
stream_options.include_usage) and [DONE]. Requests do not share anything: the server's
own timing does not depend on the concurrency, so what a load generator measures beyond
the server's record of each request is the client's own overhead (and loopback).

The server records, per request, when the handler got it and when it sent the first and
the last token (time.perf_counter), served at GET /records; POST /reset clears them.

    python reference_server.py --port 8199 --ttft-ms 15 --itl-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

MODEL = "reference"
RECORDS: list[dict[str, float]] = []
TIMING = {"ttft_s": 0.015, "itl_s": 0.005}


def chunk(index: int, text: str, finish: str | None = None) -> str:
    body = {
        "id": "cmpl-ref",
        "object": "text_completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


async def completions(request: Request):
    arrived = time.perf_counter()
    body = await request.json()
    tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
    prompt = body.get("prompt") or ""
    prompt_tokens = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
    record = {"arrived": arrived, "tokens": tokens}

    if not body.get("stream"):
        await asyncio.sleep(max(0.0, TIMING["ttft_s"] + (tokens - 1) * TIMING["itl_s"]))
        record["first"] = record["last"] = time.perf_counter()
        RECORDS.append(record)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
        text = " x" * tokens
        return JSONResponse({"id": "cmpl-ref", "object": "text_completion", "model": MODEL, "usage": usage,
                             "choices": [{"index": 0, "text": text, "finish_reason": "length"}]})  # fmt: skip

    async def stream():
        for index in range(tokens):
            delay = arrived + TIMING["ttft_s"] + index * TIMING["itl_s"] - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if index == 0:
                record["first"] = time.perf_counter()
            yield chunk(index, " x", "length" if index == tokens - 1 else None)
        record["last"] = time.perf_counter()
        RECORDS.append(record)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
        last = {"id": "cmpl-ref", "object": "text_completion", "model": MODEL, "choices": [], "usage": usage}
        yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


async def models(request: Request):
    return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "reference"}]})


async def health(request: Request):
    return PlainTextResponse("ok")


async def records(request: Request):
    return JSONResponse(RECORDS)


async def reset(request: Request):
    RECORDS.clear()
    return JSONResponse({"cleared": True})


app = Starlette(
    routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models),
        Route("/health", health),
        Route("/records", records),
        Route("/reset", reset, methods=["POST"]),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--ttft-ms", type=float, default=15.0)
    parser.add_argument("--itl-ms", type=float, default=5.0)
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args()
    TIMING.update(ttft_s=args.ttft_ms / 1000, itl_s=args.itl_ms / 1000)
    globals()["MODEL"] = args.model
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
