"""A run's charts, drawn with matplotlib: PNG files beside the markdown tables, SVG for table.html.

Offline charts come from the comparison frame (runner.table.rows): tok/s per row
with the repetitions' min-max as whiskers, grouped by engine; device memory per
row (host RSS for CPU rows, hatched); tok/s against memory with the Pareto front
(no other row is both faster and smaller) marked; time to first token against
decode rate. Serving charts come from the serving cells' levels: output
throughput against concurrency, and against p99 time to first token. Only rows
and levels that measured something are drawn: failed and unsupported rows stay
in the tables with their reason.

Each chart is written as ``charts/<name>.png`` and ``charts/<name>.svg``; a
render first removes the charts of its own kind (``offline-*`` or
``serving-*``) so that none outlives the rows it drew.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

FOLDER = "charts"
LABEL_CHARS = 48  # a label's line length on the charts
DPI = 110


@dataclass(frozen=True)
class Chart:
    name: str  # file stem under charts/: "offline-N-..." or "serving-N-...", N its place in the report
    title: str

    @property
    def png(self) -> str:
        return f"{FOLDER}/{self.name}.png"

    @property
    def svg(self) -> str:
        return f"{FOLDER}/{self.name}.svg"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, whatever the environment says
    matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: smaller, searchable, the page's font
    matplotlib.rcParams["svg.hashsalt"] = "inference-matrix"  # the same rows give the same SVG ids (no diff noise)
    import matplotlib.pyplot as plt

    return plt


def _clear(folder: Path, kind: str) -> None:
    charts = folder / FOLDER
    for path in charts.glob(f"{kind}-*") if charts.is_dir() else ():
        path.unlink()


def _save(fig: Any, folder: Path, chart: Chart) -> Chart:
    (folder / FOLDER).mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(folder / chart.png, dpi=DPI)
    fig.savefig(folder / chart.svg, metadata={"Date": None})  # no timestamp: the same rows give the same file
    _pyplot().close(fig)
    return chart


def _row_label(software: str, settings: Any) -> str:
    """The row's engine and settings, wrapped (never cut: two rows may differ only at the end)."""
    text = f"{software}: {'; '.join(settings) if isinstance(settings, list) else settings}"
    return "\n".join(textwrap.wrap(text, LABEL_CHARS, break_long_words=False)) or text


def _engine_colours(names: list[str]) -> dict[str, Any]:
    palette = _pyplot().get_cmap("tab10")
    return {name: palette(i % 10) for i, name in enumerate(dict.fromkeys(names))}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (x smaller, y larger), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def offline_charts(frame: pd.DataFrame, folder: Path) -> list[Chart]:
    """The offline table's charts, from runner.table.rows' frame; none when no row measured anything."""
    _clear(folder, "offline")
    ok = frame[(frame["Status"] == "ok") & frame["Avg Tok/s"].notna()].copy()
    if ok.empty:
        return []
    ok["label"] = [_row_label(s, t) for s, t in zip(ok["Software"], ok["Settings"], strict=True)]
    ok = ok.sort_values(["Software", "Avg Tok/s"], ascending=[True, True], kind="stable")
    colours = _engine_colours(list(ok["Software"]))
    return [
        chart
        for chart in (
            _throughput(ok, colours, folder),
            _memory(ok, colours, folder),
            _pareto(ok, colours, folder),
            _latency(ok, colours, folder),
        )
        if chart is not None
    ]


def _bar_height(labels: pd.Series) -> float:
    lines = sum(label.count("\n") + 1 for label in labels)
    return max(2.5, 0.2 * lines + 0.2 * len(labels) + 1.2)


def _legend(ax: Any, colours: dict[str, Any]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=n) for n, c in colours.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside: bars stay clear


def _throughput(ok: pd.DataFrame, colours: dict[str, Any], folder: Path) -> Chart:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, _bar_height(ok["label"])))
    values = ok["Avg Tok/s"].to_numpy(float)
    low = (values - ok["Tok/s min"].fillna(ok["Avg Tok/s"]).to_numpy(float)).clip(min=0)
    high = (ok["Tok/s max"].fillna(ok["Avg Tok/s"]).to_numpy(float) - values).clip(min=0)
    ax.barh(
        ok["label"], values, xerr=[low, high], capsize=3, color=[colours[s] for s in ok["Software"]],
        error_kw={"elinewidth": 1, "ecolor": "black"},
    )  # fmt: skip
    ax.set_xlabel("new tokens per second (median of repetitions; whiskers: min-max)")
    ax.set_title("Avg Tok/s per setting")
    ax.grid(axis="x", alpha=0.3)
    _legend(ax, colours)
    return _save(fig, folder, Chart("offline-1-throughput", "Tok/s per setting"))


def _memory(ok: pd.DataFrame, colours: dict[str, Any], folder: Path) -> Chart | None:
    rows = ok[ok["Max Mem (MiB)"].notna()]
    if rows.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, _bar_height(rows["label"])))
    rss = [str(kind).endswith("rss") for kind in rows["Memory kind"]]
    bars = ax.barh(rows["label"], rows["Max Mem (MiB)"], color=[colours[s] for s in rows["Software"]])
    for bar, host in zip(bars, rss, strict=True):
        if host:
            bar.set_hatch("//")
    ax.set_xlabel("MiB: peak device memory in use (hatched: peak host RSS of a CPU cell)")
    ax.set_title("Memory per setting")
    ax.grid(axis="x", alpha=0.3)
    _legend(ax, colours)
    return _save(fig, folder, Chart("offline-2-memory", "Max Mem per setting"))


def _pareto(ok: pd.DataFrame, colours: dict[str, Any], folder: Path) -> Chart | None:
    rows = ok[ok["Max Mem (MiB)"].notna()].reset_index(drop=True)
    if rows.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    points = list(zip(rows["Max Mem (MiB)"].astype(float), rows["Avg Tok/s"].astype(float), strict=True))
    for name, colour in colours.items():
        mine = rows["Software"] == name
        ax.scatter(rows.loc[mine, "Max Mem (MiB)"], rows.loc[mine, "Avg Tok/s"], color=colour, label=name, s=36)
    front = pareto_front(points)
    ax.step([points[i][0] for i in front], [points[i][1] for i in front], where="post", color="black", lw=1, ls="--")
    for i in front:
        ax.annotate(rows.loc[i, "label"], points[i], fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.margins(x=0.08, y=0.3)  # room for the front's labels inside the axes
    ax.set_xlabel("Max Mem (MiB)")
    ax.set_ylabel("tok/s")
    ax.set_title("Speed against memory (dashed: the Pareto front, labelled)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, folder, Chart("offline-3-pareto", "Tok/s against memory, Pareto front"))


def _latency(ok: pd.DataFrame, colours: dict[str, Any], folder: Path) -> Chart | None:
    rows = ok[ok["TTFT (ms)"].notna() & ok["Decode tok/s"].notna()]
    if rows.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, colour in colours.items():
        mine = rows["Software"] == name
        ax.scatter(rows.loc[mine, "TTFT (ms)"], rows.loc[mine, "Decode tok/s"], color=colour, label=name, s=36)
    ax.set_xlabel("time to first token (ms, median)")
    ax.set_ylabel("decode tok/s (median)")
    ax.set_title("Prefill latency against decode rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, folder, Chart("offline-4-latency", "TTFT against decode rate"))


def serving_charts(results: list[dict[str, Any]], ttft_bound_ms: float, folder: Path) -> list[Chart]:
    """Throughput curves of the serving cells' measured levels; none when no level measured anything."""
    _clear(folder, "serving")
    curves = []
    for result in results:
        levels = [lv for lv in result.get("levels", []) if lv["status"] == "ok" and lv.get("metrics")]
        if levels:
            label = _row_label(result["cell"]["software"], result["cell"]["label"])
            curves.append((label, sorted(levels, key=lambda lv: lv["level"])))
    if not curves:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label, levels in curves:
        rates = [lv["metrics"]["output_tokens_per_s"] for lv in levels]
        ax.plot([lv["level"] for lv in levels], rates, "o-", label=label)
    ax.set_xscale("log", base=2)
    swept = sorted({lv["level"] for _, levels in curves for lv in levels})
    ax.set_xticks(swept, [str(level) for level in swept])  # the levels as numbers, not powers of two
    ax.minorticks_off()
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("output tok/s")
    ax.set_title("Serving throughput against concurrency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    charts = [_save(fig, folder, Chart("serving-1-throughput", "Output tok/s against concurrency"))]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label, levels in curves:
        shown = [lv for lv in levels if lv["metrics"].get("ttft_ms_p99") is not None]
        ax.plot(
            [lv["metrics"]["ttft_ms_p99"] for lv in shown], [lv["metrics"]["output_tokens_per_s"] for lv in shown],
            "o-", label=label,
        )  # fmt: skip
        for lv in shown:
            at = (lv["metrics"]["ttft_ms_p99"], lv["metrics"]["output_tokens_per_s"])
            ax.annotate(f"c{lv['level']}", at, fontsize=7, xytext=(3, 3), textcoords="offset points")
    worst = max((lv["metrics"].get("ttft_ms_p99") or 0) for _, levels in curves for lv in levels)
    if ttft_bound_ms <= 1.5 * worst:  # the matrix's bound, where it does not squash the measured points
        ax.axvline(ttft_bound_ms, color="grey", ls=":", lw=1, label=f"p99 TTFT bound {ttft_bound_ms:g} ms")
    ax.set_xlabel("p99 time to first token (ms)")
    ax.set_ylabel("output tok/s")
    ax.set_title("Serving throughput against p99 TTFT (points: concurrency levels)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    charts.append(_save(fig, folder, Chart("serving-2-latency", "Output tok/s against p99 TTFT")))
    interactive = _interactivity(curves, folder)
    return charts + ([interactive] if interactive else [])


def _interactivity(curves: list[tuple[str, list[dict[str, Any]]]], folder: Path) -> Chart | None:
    """What the server delivers in all against what each user sees (output tok/s of one request, AIPerf's
    per-user rate): the trade-off a concurrency level picks, up and to the right being better."""
    shown = [
        (label, [lv for lv in levels if lv["metrics"].get("output_tokens_per_s_per_user")]) for label, levels in curves
    ]
    shown = [(label, levels) for label, levels in shown if levels]
    if not shown:
        return None
    fig, ax = _pyplot().subplots(figsize=(9, 5.5))
    for label, levels in shown:
        points = [
            (lv["metrics"]["output_tokens_per_s_per_user"], lv["metrics"]["output_tokens_per_s"]) for lv in levels
        ]
        ax.plot(*zip(*points, strict=True), "o-", label=label)
        for lv, at in zip(levels, points, strict=True):
            ax.annotate(f"c{lv['level']}", at, fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("output tok/s per user (one request's rate)")
    ax.set_ylabel("output tok/s (all requests)")
    ax.set_title("Serving throughput against each user's rate (points: concurrency levels)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, folder, Chart("serving-3-interactivity", "Output tok/s against tok/s per user"))


def drawn(draw, *args: Any) -> tuple[list[Chart], str | None]:
    """The charts draw(*args) made, or none and why: a chart that cannot be drawn never costs the tables."""
    try:
        return draw(*args), None
    except Exception as exc:  # any plotting failure: the tables are written regardless
        return [], f"{type(exc).__name__}: {exc}"


def markdown_links(charts: list[Chart]) -> list[str]:
    """Lines linking the charts' PNG files, for the markdown beside them."""
    if not charts:
        return []
    return ["Charts (table.html has them with sortable tables):", "", *(f"![{c.title}]({c.png})" for c in charts), ""]
