"""runner.results: atomic writes, tolerant reads, and reconciling a child's report with its exit code."""

from __future__ import annotations

import json

import pytest

from runner.results import FAILURES, STATUSES, failure, read_result, reconcile, schema_problem, tail
from runner.shared import RESULT_SCHEMA_VERSION, write_json_atomic

CELL = {"id": "transformers-000000000000", "software": "HF Transformers", "label": ["FP32"], "gpus": []}
MODEL = {"source": "synthetic", "name": "tiny-mistral", "synthetic": True}
WORKLOAD = {"prompt_tokens": 8, "new_tokens": 8, "batch_size": 1, "warmup": 0, "repetitions": 1}
LOG = "$ python run_transformers.py\nloading\n\nRuntimeError: the last words\n\n"


def fallback() -> dict:
    return failure(CELL, MODEL, WORKLOAD, "failed", "")


def child(status: str = "ok", reason: str | None = None) -> dict:
    return {
        "schema_version": RESULT_SCHEMA_VERSION,
        "cell": CELL,
        "model": MODEL,
        "workload": WORKLOAD,
        "status": status,
        "reason": reason,
        "metrics": {"tokens_per_s": {"median": 10.0}} if status == "ok" else {},
    }


def test_failure_document():
    doc = failure(CELL, MODEL, WORKLOAD, "oom", "CUDA out of memory")
    assert doc["schema_version"] == 1
    assert doc["cell"] == CELL and doc["model"] == MODEL and doc["workload"] == WORKLOAD
    assert doc["status"] == "oom" and doc["reason"] == "CUDA out of memory"
    assert doc["metrics"] == {}
    assert doc["finished_at"]
    with pytest.raises(AssertionError):
        failure(CELL, MODEL, WORKLOAD, "exploded", "not a status")
    assert STATUSES == ("ok", "unsupported", "failed", "timeout", "oom", "skipped")
    assert FAILURES == ("failed", "timeout", "oom")  # what --strict counts: not "unsupported"


def test_ok_child_exit_zero_is_ok():
    result = reconcile(child(), 0, LOG, fallback())
    assert result["status"] == "ok"
    assert result["exit_code"] == 0
    assert result["metrics"] == {"tokens_per_s": {"median": 10.0}}
    assert "log_tail" not in result


@pytest.mark.parametrize("code", [1, 2, -9])
def test_ok_child_nonzero_exit_is_failed(code):
    result = reconcile(child(), code, LOG, fallback())
    assert result["status"] == "failed"
    assert result["reason"] == f"reported ok but exited with code {code}"
    assert result["exit_code"] == code
    assert result["log_tail"] == LOG


def test_no_result_exit_zero_is_failed_with_reason():
    result = reconcile(None, 0, LOG, fallback())
    assert result["status"] == "failed"
    assert result["reason"] == "exited 0 but wrote no result: RuntimeError: the last words"
    assert result["exit_code"] == 0
    assert result["log_tail"] == LOG
    assert result["cell"] == CELL and result["schema_version"] == 1


def test_no_result_nonzero_exit_names_the_code():
    result = reconcile(None, 3, LOG, fallback())
    assert result["status"] == "failed"
    assert result["reason"] == "exit code 3, no result written: RuntimeError: the last words"
    assert result["exit_code"] == 3


def test_no_result_empty_log():
    result = reconcile(None, 0, "", fallback())
    assert result["reason"] == "exited 0 but wrote no result"


def test_reason_keeps_only_300_chars_of_the_last_line():
    result = reconcile(None, 1, "x" * 1000 + "\n", fallback())
    assert result["reason"] == "exit code 1, no result written: " + "x" * 300


def test_failed_child_nonzero_exit_keeps_its_reason():
    result = reconcile(child("oom", "OutOfMemoryError: CUDA out of memory"), 1, LOG, fallback())
    assert result["status"] == "oom"
    assert result["reason"] == "OutOfMemoryError: CUDA out of memory"
    assert result["exit_code"] == 1
    assert result["log_tail"] == LOG


def test_failed_child_exit_zero_stays_failed():
    result = reconcile(child("failed", "ImportError: no flash_attn"), 0, LOG, fallback())
    assert result["status"] == "failed"
    assert result["reason"] == "ImportError: no flash_attn"
    assert result["exit_code"] == 0


def test_tail():
    assert tail("abcdef", 3) == "def"
    assert tail("ab", 3) == "ab"
    assert len(tail("y" * 10_000)) == 4000


def test_write_then_read_roundtrip(tmp_path):
    path = tmp_path / "deep" / "cells" / "x.json"
    document = child()
    write_json_atomic(path, document)
    assert read_result(path) == document
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no scratch file left behind
    write_json_atomic(path, {**document, "status": "failed"})
    assert read_result(path)["status"] == "failed"
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_read_result_missing_file(tmp_path):
    assert read_result(tmp_path / "absent.json") is None


@pytest.mark.parametrize(
    "text",
    [
        "{not json at all",
        "",
        '{"schema_version": 1, "status": "ok"',  # truncated mid-write
        "\x00\x01\x02",
        "[1, 2, 3]",
        '"ok"',
        json.dumps({"status": "ok"}),  # no schema_version
        json.dumps({"schema_version": 2, "status": "ok"}),  # a future schema
    ],
    ids=["garbage", "empty", "truncated", "binary", "list", "string", "no-schema", "schema-2"],
)
def test_read_result_rejects_garbage(tmp_path, text):
    path = tmp_path / "r.json"
    path.write_text(text)
    assert read_result(path) is None


def test_a_result_of_another_schema_says_so(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"schema_version": RESULT_SCHEMA_VERSION + 1, "status": "ok"}))
    assert read_result(path) is None
    problem = schema_problem(path)
    assert problem.startswith(f"the cell's harness wrote result schema {RESULT_SCHEMA_VERSION + 1}, this runner reads")
    assert "rebuild the image" in problem
    for text in (json.dumps(child()), "{not json", json.dumps({"status": "ok"})):
        path.write_text(text)
        assert schema_problem(path) is None  # readable, or not a result at all: nothing to say about schemas


def test_read_result_not_utf8(tmp_path):
    path = tmp_path / "r.json"
    path.write_bytes(b'{"schema_version": 1, "status": "\xff"}')
    assert read_result(path) is None


def test_read_result_of_a_directory(tmp_path):
    assert read_result(tmp_path) is None
