"""The report beside the tables: charts as PNG (linked from the markdown) and SVG, and table.html.

Rendered from committed GPU results with ``--table-only`` (the same path a run
takes), then opened in a real headless Chromium (Debian's package; CI installs
it) with every network request sent to a dead proxy: the page must finish its
script (sortable tables) and draw its charts. The screenshot is kept under
test-artifacts/ (BENCH_TEST_ARTIFACTS).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from runner.report.charts import pareto_front

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("BENCH_TEST_ARTIFACTS", REPO / "test-artifacts"))


def test_the_pareto_front_keeps_what_nothing_beats_on_both_axes():
    # (memory, tok/s): the third is beaten by the first (less memory, faster), the last is the fastest
    points = [(10.0, 120.0), (17.0, 133.0), (17.0, 122.0), (32.0, 43.0), (5.0, 20.0), (40.0, 140.0)]
    assert pareto_front(points) == [4, 0, 1, 5]
    assert pareto_front([(1.0, 1.0)]) == [0] and pareto_front([]) == []


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, runner_cli) -> Path:
    """results/h100/transformers (measured and failed rows) re-rendered into a scratch copy."""
    folder = tmp_path_factory.mktemp("report") / "h100-transformers"
    shutil.copytree(REPO / "results" / "h100" / "transformers", folder)
    for stale in ("table.html", "charts"):
        shutil.rmtree(folder / stale, ignore_errors=True) if (folder / stale).is_dir() else None
    done = runner_cli("matrix.yaml", "-o", str(folder), "--table-only")
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


def test_every_render_writes_png_charts_linked_from_the_markdown(rendered):
    markdown = (rendered / "table.md").read_text()
    links = re.findall(r"!\[[^\]]+\]\((charts/[^)]+\.png)\)", markdown)
    assert links == [
        "charts/offline-1-throughput.png",
        "charts/offline-2-memory.png",
        "charts/offline-3-pareto.png",
        "charts/offline-4-latency.png",
    ]
    for link in links:
        png = (rendered / link).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_table_html_is_self_contained_and_keeps_failed_rows_out_of_the_charts(rendered):
    page = (rendered / "table.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing to fetch
    assert page.count("<svg") == 4 and page.count('<table class="sortable">') == 2
    assert "new Tablesort(t)" in page and "tablesort v5.7.1" in page
    # a failed row is in the tables with its reason, and in no chart (the charts name only measured rows)
    assert "BetterTransformer unavailable: No module named &#x27;optimum&#x27;" in page
    throughput = (rendered / "charts" / "offline-1-throughput.svg").read_text()
    assert "BetterTransformer" not in throughput and "attn_implementation=sdpa" in throughput


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_table_html_opens_offline_in_a_real_browser_with_its_charts_drawn(rendered, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium here: `apt-get install chromium` (CI installs it)")
    flags = [
        browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # any network request fails
        f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    url = (rendered / "table.html").as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert 'data-report="ready"' in dom.stdout, dom.stderr[-2000:]  # its script ran: the tables are sortable
    assert dom.stdout.count("aria-sort") >= 2 or "tablesort" in dom.stdout.lower()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "table-html.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [*flags, "--window-size=1400,4000", f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120
    )
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[0] == 4000 and pixels.shape[1] == 1400
    rgb = (pixels[..., :3] * 255).astype(int)
    colours = {tuple(p) for p in rgb[::7, ::7].reshape(-1, 3)}
    # the charts draw bars and points in tab10's colours: blank or text-only pages have a few greys
    assert (31, 119, 180) in colours or len(colours) > 200, f"{len(colours)} colours in {shot}"
    coloured = ((rgb.max(axis=2) - rgb.min(axis=2)) > 60).mean()
    assert coloured > 0.01, f"only {coloured:.2%} of {shot} is coloured: the charts did not draw"


def test_a_chart_that_cannot_be_drawn_costs_no_table():
    from runner.report.charts import drawn

    def broken(frame, folder):
        raise ValueError("Image size of 100x900000 pixels is too large")

    assert drawn(broken, None, None) == ([], "ValueError: Image size of 100x900000 pixels is too large")


def test_serving_charts_show_the_levels_as_numbers_and_the_per_user_trade_off(runner_cli, tmp_path):
    """results/h200/serving-llamacpp re-rendered: throughput against concurrency (ticks at the levels swept,
    written as numbers), against p99 TTFT, and against each user's rate (AIPerf's per-user output tok/s)."""
    folder = tmp_path / "serving-llamacpp"
    shutil.copytree(REPO / "results" / "h200" / "serving-llamacpp", folder)
    shutil.rmtree(folder / "charts")
    done = runner_cli(str(folder / "matrix-serving.yaml"), "-o", str(folder), "--table-only")
    assert done.returncode == 0, done.stdout + done.stderr
    links = re.findall(r"!\[([^\]]+)\]\((charts/[^)]+\.png)\)", (folder / "serving.md").read_text())
    assert [png for _, png in links] == [
        "charts/serving-1-throughput.png",
        "charts/serving-2-latency.png",
        "charts/serving-3-interactivity.png",
    ]
    assert links[2][0] == "Output tok/s against tok/s per user"
    throughput = (folder / "charts" / "serving-1-throughput.svg").read_text()
    texts = re.findall(r"<text [^>]*>([^<]*)</text>", throughput)  # SVG text stays text (svg.fonttype none)
    assert texts[:5] == ["1", "4", "16", "64", "concurrency (requests in flight)"], texts
    interactivity = (folder / "charts" / "serving-3-interactivity.svg").read_text()
    assert "c64" in interactivity and "llama.cpp: fp16; flash_attn=True" in interactivity
