"""The ray executor on a real two-node Ray cluster started on this machine (CPU only), no mocks.

tests/two_node_ray.py starts it (node_a, and node_b declaring one GPU of card kind TESTCARD).
Here: an unreachable address is one line; SIGINT to the runner while cells run on both nodes
leaves failed "interrupted" rows and no engine process or Ray worker behind; a GPU cell for a
card lands on that card's node, and one for a card the cluster lacks is not run, each card with
its own table; a cell past its timeout is killed on its node; a third node with another kind of
card makes a matrix naming no cards a one-line refusal; a node killed mid-cell leaves that cell
a failed row naming the lost node while the rest finish elsewhere. tests/test_end_to_end.py runs
matrix-cpu.yaml through the cluster and compares its table with the local executor's;
tests/test_docker.py runs cells in containers on the nodes (--ray-inner docker).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray", reason="the ray executor's tests need Ray: pip install '.[ray]' (ray==2.60.0)")

from two_node_ray import TEST_CARD, engine_processes, free_port, join, ray_processes, raylet_of, runner_process

pytestmark = pytest.mark.slow  # a real cluster and real engine runs on the tiny model

RERUN = "tests/fixtures/matrices/e2e_rerun.yaml"  # two quick CPU cells
INTERRUPT = "tests/fixtures/matrices/e2e_interrupt.yaml"  # three longer CPU cells
CARDS = "tests/fixtures/matrices/ray_cards.yaml"  # a GPU cell on two card kinds and a CPU cell
DEADLINE_S = 300  # guards against a hung test only


def test_an_unreachable_cluster_is_one_line(runner_cli, model_store, tmp_path):
    port = free_port()  # nothing listens there
    done = runner_cli(RERUN, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}", "-o", str(tmp_path / "r"))
    assert done.returncode == 1
    assert done.stderr.strip().startswith(f"error: --ray-address 127.0.0.1:{port}: no Ray cluster answered there")
    assert len(done.stderr.strip().splitlines()) == 1


def test_interrupt_stops_the_cells_on_both_nodes_and_leaves_nothing(ray_cluster, repo, model_store, tmp_path):
    folder = tmp_path / "run"
    args = INTERRUPT, "--executor", "ray", "--ray-address", ray_cluster, "-o", str(folder), "--store", str(model_store)
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with runner_process(repo, out, err, *args) as runner:
        deadline = time.monotonic() + DEADLINE_S
        while len(engine_processes()) < 2:  # a cell's engine running on each node
            assert runner.poll() is None, out.read_text()[-3000:] + err.read_text()[-3000:]
            assert time.monotonic() < deadline, "no two engines started"
            time.sleep(0.1)
        assert len([p for p in ray_processes() if "CellOnNode" in p]) >= 2  # the cells' actors, seen
        os.kill(runner.pid, signal.SIGINT)  # the runner only, as Ctrl-C in its terminal would
        code = runner.wait(timeout=DEADLINE_S)
    stdout, stderr = out.read_text(), err.read_text()
    assert code == 130, stdout[-3000:] + stderr[-3000:]
    assert stderr.splitlines()[-1].startswith("interrupted: finished cells are kept"), stderr

    results = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.json"))]
    assert len(results) == 3, stdout[-3000:]
    stopped = [r for r in results if r.get("node")]  # the two that ran, one on each node
    node_b = [f"accelerator_type:{TEST_CARD}", "node_b"]
    assert sorted(r["node"]["custom_resources"] for r in stopped) == sorted([["node_a"], node_b])
    for result in stopped:
        assert result["status"] == "failed" and result["reason"].startswith("interrupted"), result["reason"]
        assert result["exit_code"] == -signal.SIGTERM  # the node's executor stopped it
    queued = [r for r in results if not r.get("node")]
    assert len(queued) == 1 and queued[0]["reason"].startswith("interrupted"), queued
    assert (folder / "table.md").is_file()

    deadline = time.monotonic() + 30
    while engine_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not engine_processes()  # no cell outlives the run, on either node
    # the runner's actors are gone: only the nodes' own idle workers may remain
    deadline = time.monotonic() + 30
    while any("CellOnNode" in p for p in ray_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in ray_processes() if "CellOnNode" in p]


def test_a_card_cell_runs_on_that_card_node_and_each_card_gets_its_table(
    ray_cluster, runner_cli, model_store, tmp_path
):
    """cards: [TESTCARD, OTHERCARD]: the GPU cell for TESTCARD is placed on node_b (the node of that kind; with
    no GPU there it is not run: not a CPU measurement in a GPU row), the one for OTHERCARD is not run (no such
    node), the CPU cell runs once; one table per card and one for the CPU row, listed by table.md."""
    folder = tmp_path / "run"
    done = runner_cli(
        CARDS, "--executor", "ray", "--ray-address", ray_cluster, "-o", str(folder), "--store", str(model_store),
        timeout=DEADLINE_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = {
        (r["cell"]["card"], tuple(r["cell"]["gpus"])): r
        for r in (json.loads(p.read_text()) for p in (folder / "cells").glob("*.json"))
    }
    assert sorted(results, key=str) == sorted([(TEST_CARD, (0,)), ("OTHERCARD", (0,)), (None, ())], key=str)
    placed = results[(TEST_CARD, (0,))]
    assert placed["node"]["custom_resources"] == [f"accelerator_type:{TEST_CARD}", "node_b"]
    assert placed["node"]["gpus"] == [0]  # the GPU Ray gave it there
    if not torch.cuda.is_available():  # CI: node_b's "GPU" is a Ray resource, not a device
        assert placed["status"] == "unsupported", placed.get("reason")
        no_cuda = f"the cell asks for GPU(s) [0] and torch {torch.__version__} sees no CUDA device here"
        assert placed["reason"] == no_cuda
    missing = results[("OTHERCARD", (0,))]
    assert missing["status"] == "unsupported" and "node" not in missing
    assert missing["reason"] == "no node of the Ray cluster has OTHERCARD cards (resource accelerator_type:OTHERCARD)"
    assert results[(None, ())]["status"] == "ok"
    index = (folder / "table.md").read_text()
    for card in (TEST_CARD, "OTHERCARD", "cpu"):
        assert f"- [{card}](cards/{card}/table.md): 1 rows" in index, index
        assert (folder / "cards" / card / "table.md").is_file()
    other = (folder / "cards" / "OTHERCARD" / "table.md").read_text()
    assert "not run here: no node of the Ray cluster has OTHERCARD cards" in other


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_a_cell_past_its_timeout_is_killed_on_its_node_and_the_rest_runs(
    ray_cluster, runner_cli, model_store, tmp_path
):
    """The timeout holds on the node: the cell with timeout_s 1 is killed there by the node's executor (a timeout
    row naming its node), its engine is gone, and the other cell of the matrix runs."""
    folder = tmp_path / "run"
    done = runner_cli(
        "tests/fixtures/matrices/e2e_timeout.yaml", "--executor", "ray", "--ray-address", ray_cluster,
        "-o", str(folder), "--store", str(model_store), "--strict", timeout=DEADLINE_S,
    )  # fmt: skip
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]  # --strict: a cell did not succeed
    results = {
        r["cell"]["timeout_s"]: r for r in (json.loads(p.read_text()) for p in (folder / "cells").glob("*.json"))
    }
    late = results[1]
    assert late["status"] == "timeout" and "no result after 1 s; the cell was killed" in late["reason"], late
    assert late["exit_code"] < 0 and late["node"]["hostname"]
    assert [r["status"] for t, r in results.items() if t != 1] == ["ok"]
    assert not engine_processes()


def test_a_cluster_of_two_card_kinds_refuses_a_matrix_naming_none(ray_cluster, runner_cli, repo, model_store, tmp_path):
    """A third node joins with a GPU of another kind (no CPU, so that no later cell lands there). The GPU cells of
    a matrix naming no cards could then land on either kind, whose numbers must not share a table: the runner
    refuses at once, in one line saying which cards to add, and runs nothing."""
    join(ray_cluster, "node_c", "OTHERKIND", cpus=0)
    matrix = tmp_path / "no-cards.yaml"
    text = (repo / CARDS).read_text()
    matrix.write_text(text.replace("cards: [TESTCARD, OTHERCARD]\n", ""))
    assert "cards:" not in matrix.read_text()
    folder = tmp_path / "run"
    done = runner_cli(
        str(matrix), "--executor", "ray", "--ray-address", ray_cluster, "-o", str(folder), "--store", str(model_store),
        timeout=DEADLINE_S,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        f"error: --executor ray: the cluster has GPU nodes of 2 card kinds (OTHERKIND, {TEST_CARD}) and this matrix "
        f"names none: add `cards: [OTHERKIND, {TEST_CARD}]` to it (each GPU cell runs on each, one table per card), "
        "or list the kinds it should run on"
    ]
    assert not list(folder.glob("cells/*.json"))


def test_a_lost_node_turns_its_cell_into_a_failed_row_and_the_rest_runs(ray_cluster, repo, model_store, tmp_path):
    """node_b's raylet killed (SIGKILL) while a cell runs there, as a node that dies or drops off the network:
    that cell becomes a failed row naming the lost node, its engine does not outlive the node's worker, and the
    other cells finish on node_a. Last in this module: the cluster has one node afterwards."""
    folder = tmp_path / "run"
    args = (INTERRUPT, "--executor", "ray", "--ray-address", ray_cluster, "-o", str(folder),
            "--store", str(model_store), "--strict")  # fmt: skip
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    raylet = raylet_of("node_b")
    with runner_process(repo, out, err, *args) as runner:
        deadline = time.monotonic() + DEADLINE_S
        while True:  # until node_b runs an engine: its parent is node_b's worker, whose parent is node_b's raylet
            on_b = [p for p in engine_processes() if _parent(_parent(p)) == raylet]
            if on_b:
                break
            assert runner.poll() is None, out.read_text()[-3000:] + err.read_text()[-3000:]
            assert time.monotonic() < deadline, "no engine started on node_b"
            time.sleep(0.1)
        os.kill(raylet, signal.SIGKILL)
        code = runner.wait(timeout=DEADLINE_S)
    stdout, stderr = out.read_text(), err.read_text()
    assert code == 3, stdout[-3000:] + stderr[-3000:]  # --strict: a cell failed; the table is rendered

    results = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.json"))]
    assert len(results) == 3, stdout[-3000:]
    lost = [r for r in results if r["status"] != "ok"]
    assert len(lost) == 1 and lost[0]["reason"].startswith("the Ray node running this cell was lost"), lost
    ran = [r for r in results if r["status"] == "ok"]
    assert len(ran) == 2 and all(r["node"]["custom_resources"] == ["node_a"] for r in ran)
    assert (folder / "table.md").is_file()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in on_b) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in on_b if _alive(p)]  # the engine died with its node's worker (parent-death signal)


def _alive(pid: int) -> bool:
    """Running, not merely a zombie left unreaped (this machine's pid 1 may not reap orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
