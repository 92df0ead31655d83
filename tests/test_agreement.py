"""The fidelity check's pooled TTFT: both tools' medians over every request of a level's runs, and the interval.

Level folders are written the way a sweep leaves them (AIPerf's per-request export, warm-up records
included; vllm bench serve's reference.json with its requests), and the committed H100 run
(results/h100/serving, its raw files unpacked from raw.tar.xz into a copy) is read as the table reads it.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from runner import raw_archive
from runner.serving.agreement import loadgen_requests, loadgen_ttfts, pooled_ttft, resends, waves, with_pooled
from runner.serving.loadgen import server_reads
from runner.serving.table import _reference_note, summary_row

REPO = Path(__file__).resolve().parents[1]


def write_run(folder: Path, ours: list[float], theirs: list[float] | None, warmup: int = 2) -> None:
    """One run of both tools at a level: AIPerf's export (warm-up first, then the measured requests, written out of
    send order as its record processors do) and the engine benchmark's reference.json."""
    folder.mkdir(parents=True, exist_ok=True)
    records = [("warmup", i, 999.0) for i in range(warmup)]
    records += [("profiling", 1000 + i, ttft) for i, ttft in enumerate(ours)]
    lines = [
        json.dumps(
            {
                "metadata": {"benchmark_phase": phase, "request_start_ns": sent * 1_000_000},
                "metrics": {"time_to_first_token": {"value": ttft, "unit": "ms"}},
            }
        )
        for phase, sent, ttft in reversed(records)
    ]
    (folder / "profile_export.jsonl").write_text("\n".join(lines) + "\n")
    if theirs is not None:
        requests = [{"sent_s": i / 100, "ttft_ms": ttft} for i, ttft in enumerate(theirs)]
        requests.append({"sent_s": 9.0, "ttft_ms": 0.0, "error": "connection reset"})  # a failed request: not a TTFT
        (folder / "reference.json").write_text(json.dumps({"median_ttft_ms": 1.0, "requests": requests}))


def wavy(draw: random.Random, level: int, count: int) -> list[float]:
    """TTFTs of a closed loop: each wave of `level` requests shares a wave-wide offset, plus a little noise."""
    found = []
    for _ in range(count // level):
        offset = draw.uniform(20, 80)
        found += [offset + draw.uniform(0, 5) for _ in range(level)]
    return found


def test_the_same_requests_in_both_tools_agree_and_the_interval_holds_one(tmp_path):
    draw = random.Random(1)
    runs = [wavy(draw, 4, 32) for _ in range(3)]
    write_run(tmp_path / "c4", runs[0], runs[0])
    for number, ttfts in enumerate(runs[1:], start=2):
        write_run(tmp_path / "c4" / f"run{number}", ttfts, ttfts)
    pooled = pooled_ttft(tmp_path / "c4", 4)
    assert pooled["runs"] == [3, 3] and pooled["requests"] == [96, 96]  # warm-up and failed requests left out
    assert pooled["ratio"] == 1.0 and pooled["ttft_ms_p50"][0] == pooled["ttft_ms_p50"][1]
    low, high = pooled["interval"]
    assert low < 1 < high
    assert pooled_ttft(tmp_path / "c4", 4) == pooled  # the same interval on every reading


def test_a_tool_twice_as_slow_is_told_apart_and_wider_waves_widen_the_interval(tmp_path):
    draw = random.Random(2)
    runs = [wavy(draw, 4, 64) for _ in range(2)]
    for level in (4, 1):
        write_run(tmp_path / f"c{level}", [2 * t for t in runs[0]], runs[0])
        write_run(tmp_path / f"c{level}" / "run2", [2 * t for t in runs[1]], runs[1])
    pooled = pooled_ttft(tmp_path / "c4", 4)
    assert pooled["ratio"] == 2.0 and pooled["interval"][0] > 1  # apart: the interval excludes 1.00

    # the same requests resampled one by one (level 1) pretend to be independent: a narrower interval than by
    # waves of 4, which keeps requests that shared a wave together
    by_wave, by_request = pooled, pooled_ttft(tmp_path / "c1", 1)
    assert waves([1.0, 2.0, 3.0, 4.0, 5.0], 2) == [[1.0, 2.0], [3.0, 4.0], [5.0]]
    wide = by_wave["interval"][1] - by_wave["interval"][0]
    assert by_request["interval"][1] - by_request["interval"][0] < wide


def test_each_run_start_wave_is_resampled_among_start_waves(tmp_path):
    """Every run begins with one wave sent at once to an idle server (70 ms here against a steady 25 ms, as
    measured on an H100 with lengths drawn per request): drawn freely, six start waves of twelve would move
    the median to the start waves' and the interval would span 0.5-1.9 for tools that agree."""
    draw = random.Random(4)
    for number in (1, 2, 3):
        folder = tmp_path / "c16" / ("" if number == 1 else f"run{number}")
        ours, theirs = ([draw.uniform(60, 80) for _ in range(16)] + [draw.uniform(22, 28) for _ in range(48)]
                        for _ in range(2))  # fmt: skip
        write_run(folder, ours, theirs)
    pooled = pooled_ttft(tmp_path / "c16", 16)
    assert pooled["runs"] == [3, 3] and 22 < pooled["ttft_ms_p50"][0] < 28
    low, high = pooled["interval"]
    assert low < 1 < high and high - low < 0.1  # the steady waves' spread (about 1.4 % per median), not the modes'


def test_runs_cut_short_are_skipped_and_a_benchmark_without_requests_gives_nothing(tmp_path):
    write_run(tmp_path / "c2", [10.0, 12.0, 11.0, 13.0], [10.0, 11.0, 12.0, 13.0])
    (tmp_path / "c2" / "run2").mkdir()  # interrupted before AIPerf wrote anything
    write_run(tmp_path / "c2" / "run3", [50.0] * 4, None)  # AIPerf's turn done, the benchmark's interrupted
    pooled = pooled_ttft(tmp_path / "c2", 2)
    assert pooled["runs"] == [1, 1] and pooled["requests"] == [4, 4]
    assert pooled["interval"] is None and pooled["ratio"] == 1.0  # one run of a tool: no interval
    assert loadgen_ttfts(tmp_path / "c2") == [10.0, 12.0, 11.0, 13.0]  # in send order
    (tmp_path / "c2" / "reference.json").write_text(json.dumps({"median_ttft_ms": 11.0}))  # no --save-detailed
    assert pooled_ttft(tmp_path / "c2", 2) is None
    assert pooled_ttft(tmp_path / "missing", 2) is None
    (tmp_path / "serving" / "serve-x" / "c2").mkdir(parents=True)
    (tmp_path / "serving" / "serve-x" / "c2" / "profile_export.jsonl").write_text("{not json\n")
    (tmp_path / "serving" / "serve-x" / "c2" / "reference.json").write_text(json.dumps({"requests": [{"sent_s": 0}]}))
    stored = {"cell": {"id": "serve-x"}, "levels": [{"level": 2, "reference": {"tool": "vllm bench serve"}}]}
    reference = with_pooled(stored, tmp_path)["levels"][0]["reference"]
    assert reference["pooled_error"].startswith("JSONDecodeError")  # the row stands without the comparison
    assert "; pooled TTFT not made: JSONDecodeError" in _reference_note(reference)  # and says why


def test_table_only_makes_the_comparison_again_where_the_files_are(tmp_path):
    level = tmp_path / "serving" / "serve-x" / "c2"
    write_run(level, [10.0, 12.0, 11.0, 13.0], [10.0, 11.0, 12.0, 13.0])
    write_run(level / "run2", [10.0, 12.0, 11.0, 13.0], [10.0, 11.0, 12.0, 13.0])
    older = {"runs": [2, 2], "requests": [8, 8], "ttft_ms_p50": [11.5, 11.5], "ratio": 1.0, "interval": [0.5, 2.0]}
    stored = {"cell": {"id": "serve-x"}, "levels": [
        {"level": 2, "reference": {"tool": "vllm bench serve", "pooled_ttft": dict(older)}},
        {"level": 4, "reference": {"tool": "vllm bench serve", "pooled_ttft": dict(older)}},  # its files are gone
    ]}  # fmt: skip
    made = with_pooled(stored, tmp_path)["levels"]
    assert made[0]["reference"]["pooled_ttft"]["interval"] != [0.5, 2.0]  # an older runner's interval replaced
    assert made[0]["reference"]["pooled_ttft"]["requests"] == [8, 8]
    assert made[1]["reference"]["pooled_ttft"] == older  # kept as stored


def test_the_note_and_the_summary_row_give_the_pooled_comparison():
    reference = {
        "tool": "vllm bench serve",
        "output_tokens_per_s": 100.0,
        "output_ratio": 1.0,
        "ttft_ms_p50": 50.0,
        "ttft_p50_ratio": 0.9,
        "pooled_ttft": {
            "runs": [3, 3],
            "requests": [48, 48],
            "ttft_ms_p50": [45.0, 50.0],
            "ratio": 0.9,
            "interval": [0.8, 1.1],
        },
    }
    assert _reference_note(reference).endswith(
        "; pooled (48 and 48 requests): TTFT p50 45.0 and 50.0 ms, 0.90x (95% interval 0.80-1.10, resampling waves)"
    )
    apart = json.loads(json.dumps(reference))
    apart["pooled_ttft"].update(ratio=1.03, interval=[1.01, 1.06])
    levels = [
        {"level": n, "status": "ok", "metrics": {"output_tokens_per_s": n, "ttft_ms_p99": 5.0}, "reference": r}
        for n, r in ((1, reference), (4, apart))
    ]
    row = summary_row({"cell": {"software": "vLLM", "label": ["x"]}, "status": "ok", "levels": levels}, 1000)
    assert row["Notes"].endswith("; median TTFT pooled over each level's runs within 5% at 1 of 2 (95% interval "
                                 "inside 0.95-1.05 at 0), told apart (interval without 1.00) at 1")  # fmt: skip
    single = json.loads(json.dumps(reference))
    single["pooled_ttft"].update(runs=[1, 3], interval=None)
    assert _reference_note(single).endswith("0.90x (one run of each: no interval)")
    levels[0]["reference"] = single
    levels[1]["reference"]["pooled_ttft"].update(ratio=1.01, interval=[0.97, 1.04])
    row = summary_row({"cell": {"software": "vLLM", "label": ["x"]}, "status": "ok", "levels": levels}, 1000)
    assert row["Notes"].endswith("within 5% at 1 of 2 (95% interval inside 0.95-1.05 at 1), told apart (interval "
                                 "without 1.00) at 0")  # fmt: skip


def test_the_committed_h100_run_reads_as_its_readme_gives_it(tmp_path):
    folder = tmp_path / "serving"
    shutil.copytree(REPO / "results" / "h100" / "serving", folder)
    result = json.loads((folder / "cells" / "serve-vllm-e77a6ada39b3.json").read_text())
    assert all("pooled_ttft" not in lv["reference"] for lv in result["levels"])  # measured before the runner made it
    packed = json.loads(json.dumps(result))
    assert with_pooled(packed, folder) == result  # packed: no level's files, every level keeps what was stored
    assert raw_archive.unpack(folder) == ["logs", "serving"]
    pooled = {lv["level"]: lv["reference"]["pooled_ttft"] for lv in with_pooled(result, folder)["levels"]}
    assert pooled[1] == {
        "runs": [3, 3],
        "requests": [48, 48],
        "ttft_ms_p50": [17.263, 17.904],
        "ratio": 0.9642,
        "interval": [0.872, 1.0185],
        "resend_ms_p50": [3.778, 0.246],  # AIPerf's next request 3.8 ms after a completion, bench serve's 0.2 ms
    }
    assert pooled[16]["ratio"] == 1.2381 and pooled[16]["interval"] == [0.9191, 1.5348]
    assert pooled[64]["runs"] == [1, 1] and pooled[64]["requests"] == [256, 256]  # its second run was interrupted
    assert pooled[64]["interval"] is None
    assert "pooled (192 and 192 requests): TTFT p50 61.5 and 49.7 ms, 1.24x" in (folder / "serving.md").read_text()


def test_the_committed_h200_fidelity_run_sets_the_servers_own_ttft_beside_both_tools(tmp_path):
    folder = tmp_path / "serving-long-fidelity"
    shutil.copytree(REPO / "results" / "h200" / "serving-long-fidelity", folder)
    raw_archive.unpack(folder)
    fp8 = json.loads((folder / "cells" / "serve-vllm-b1920b458a28.json").read_text())
    levels = {lv["level"]: lv for lv in with_pooled(fp8, folder)["levels"]}
    means = levels[4]["reference"]["pooled_ttft"]["ttft_ms_mean_per_run"]
    # AIPerf's requests reach their first token 8-13 ms later than the server's own count has it; bench serve's not
    assert means == {
        "ours": [100.321, 92.194, 93.489],
        "server": [87.22, 81.523, 85.325],
        "theirs": [84.739, 81.019, 82.158],
    }
    assert means["server"][0] == round(levels[4]["server_metrics"]["ttft_ms_avg"], 3)  # run 1: the row's own count
    assert "reference_failed" not in levels[4]["reference"]["pooled_ttft"]
    at_1 = levels[1]["reference"]["pooled_ttft"]
    assert at_1["requests"] == [48, 47] and at_1["reference_failed"] == 1  # one of bench serve's got a 400
    note = _reference_note(levels[4]["reference"])
    assert "mean TTFT per run: 100.3, 92.2, 93.5 ms here, the server's own count" in note
    assert "through these runs 87.2, 81.5, 85.3 ms, 84.7, 81.0, 82.2 ms there" in note
    assert "1 of vllm bench serve's requests failed" in _reference_note(levels[1]["reference"])
    # AIPerf read vLLM's metrics 22 times through level 4, 15.6 ms a read in the process that takes the requests
    assert server_reads(folder / "serving" / "serve-vllm-b1920b458a28" / "c4") == {"reads": 22, "read_ms_avg": 15.605}
    assert "0 preemptions, read 22 times, 15.6 ms a read" in (folder / "serving.md").read_text()


def loop_sends(level: int, count: int, resend_ms: float, e2e_ms: float) -> list[float]:
    """When a closed loop sends (ms): `level` requests at once, then each next one resend_ms after one ends."""
    slots, sends = [0.0] * level, []
    for number in range(count):
        slot = min(range(level), key=slots.__getitem__)
        sends.append(slots[slot] + (resend_ms if number >= level else 0.0))
        slots[slot] = sends[-1] + e2e_ms
    return sends


def closed_loop(folder: Path, level: int, count: int, resends_ms: tuple[float, float], e2e_ms: float = 100.0) -> None:
    """One run of both tools as their closed loops send it, each resending its own time after a completion: AIPerf's
    export with its end times (TTFT 20 ms), the benchmark's requests with e2e_ms (TTFT 22 ms)."""
    folder.mkdir(parents=True, exist_ok=True)
    ours, theirs = (loop_sends(level, count, resend, e2e_ms) for resend in resends_ms)
    lines = [
        json.dumps({
            "metadata": {"benchmark_phase": "profiling", "request_start_ns": int(sent * 1e6),
                         "request_end_ns": int((sent + e2e_ms) * 1e6)},
            "metrics": {"time_to_first_token": {"value": 20.0, "unit": "ms"}},
        })
        for sent in ours
    ]  # fmt: skip
    (folder / "profile_export.jsonl").write_text("\n".join(lines) + "\n")
    requests = [{"sent_s": sent / 1e3, "ttft_ms": 22.0, "e2e_ms": e2e_ms} for sent in theirs]
    (folder / "reference.json").write_text(json.dumps({"requests": requests}))


def test_each_tools_resend_after_a_completion_is_measured_and_noted(tmp_path):
    """AIPerf sends a closed loop's next request some milliseconds after one ended (3-5 ms on an H100), vllm bench
    serve within a fraction of one: the pooled comparison gives both, over the sends after each first wave."""
    closed_loop(tmp_path / "c4", 4, 16, (4.0, 0.25))
    closed_loop(tmp_path / "c4" / "run2", 4, 16, (4.0, 0.25))
    pooled = pooled_ttft(tmp_path / "c4", 4)
    assert pooled["resend_ms_p50"] == [4.0, 0.25]
    assert pooled["ttft_ms_p50"] == [20.0, 22.0] and pooled["interval"] is not None
    reference = {"tool": "vllm bench serve", "output_tokens_per_s": 1.0, "pooled_ttft": pooled}
    assert _reference_note(reference).endswith("; next request sent 4.0 and 0.2 ms after a completion")
    # the first wave, sent at once, follows no completion: only the 12 later sends of each run are timed
    assert [round(d, 3) for d, _ in resends(loadgen_requests(tmp_path / "c4"), 4)] == [4.0] * 12
    # a run whose benchmark kept no end times (vllm bench serve without e2e_ms): no resend figures, the rest stands
    reference_json = tmp_path / "c4" / "run2" / "reference.json"
    kept = json.loads(reference_json.read_text())
    reference_json.write_text(
        json.dumps({"requests": [{k: r[k] for k in ("sent_s", "ttft_ms")} for r in kept["requests"]]})
    )
    pooled = pooled_ttft(tmp_path / "c4", 4)
    assert pooled["resend_ms_p50"] == [4.0, 0.25]  # from the run that has them
    (tmp_path / "c4" / "reference.json").write_text(reference_json.read_text())
    assert "resend_ms_p50" not in pooled_ttft(tmp_path / "c4", 4) and pooled_ttft(tmp_path / "c4", 4)["runs"] == [2, 2]
