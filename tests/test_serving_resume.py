"""What a serving cell keeps of its earlier result (runner.serving.resume): all of an ok one, the ok levels of one
cut short, nothing when what it was measured with changed or --force is given. The sweep that measures only the
levels left runs for real in tests/test_serving.py (a server killed mid-sweep, then the matrix run again)."""

from __future__ import annotations

from runner.reuse import measured_with
from runner.serving.resume import plan

WANTED = {**measured_with({"fingerprint": "abc"}, "local", "python3.11 + pkgs", "2x AMD EPYC", "0"), "loadgen": "x"}


def earlier(status: str, levels: dict[int, str], **changed) -> dict:
    return {
        "status": status,
        "started_at": "2026-12-05T10:00:00+0000",
        "measured_with": {**WANTED, **changed},
        "levels": [{"level": n, "status": s, "started": n, "peak_memory_mib": 10.0 * n} for n, s in levels.items()],
    }


def test_an_ok_result_measured_the_same_way_stands_whole():
    assert plan(earlier("ok", {1: "ok", 4: "ok"}), WANTED, [1, 4], force=False).keep
    assert plan(None, WANTED, [1, 4], force=False).why == "no earlier result"
    again = plan(earlier("ok", {1: "ok", 4: "ok"}), WANTED, [1, 4], force=True)
    assert not again.keep and again.kept == [] and again.why == "--force"


def test_a_sweep_cut_short_keeps_its_ok_levels_and_says_where_they_came_from():
    cut = earlier("failed", {1: "ok", 4: "ok", 16: "failed", 64: "failed"})
    found = plan(cut, WANTED, [1, 4, 16, 64], force=False)
    assert not found.keep and found.why == "the earlier result was failed"
    assert [lv["level"] for lv in found.kept] == [1, 4]
    assert all(lv["kept_from"] == "2026-12-05T10:00:00+0000" and lv["peak_memory_mib"] for lv in found.kept)
    # resumed twice: a level keeps the run it was measured in
    again = earlier("failed", {1: "ok", 4: "ok", 16: "ok", 64: "failed"})
    again["levels"][0]["kept_from"] = "2026-12-01T00:00:00+0000"
    assert [lv["kept_from"][:10] for lv in plan(again, WANTED, [1, 4, 16, 64], False).kept] == [
        "2026-12-01",
        "2026-12-05",
        "2026-12-05",
    ]


def test_nothing_is_kept_when_what_it_was_measured_with_changed_or_the_level_left_the_matrix():
    for key, value, said in (
        ("hardware", "an H100", "other hardware or driver"),
        ("engine_environment", "another image", "the engine's image or environment changed"),
        ("loadgen", "aiperf 0.14", "another load generator"),
    ):
        found = plan(earlier("failed", {1: "ok"}, **{key: value}), WANTED, [1, 4], force=False)
        assert found.kept == [] and found.why == f"the earlier result was failed, and {said}"
    older = earlier("failed", {1: "ok"})
    del older["measured_with"]  # written before serving results recorded it
    assert plan(older, WANTED, [1, 4], force=False).kept == []
    assert plan(earlier("failed", {2: "ok"}), WANTED, [1, 4], force=False).kept == []  # not a level of this sweep
    assert plan(earlier("failed", {1: "ok"}), WANTED, [1, 4], force=True).kept == []
