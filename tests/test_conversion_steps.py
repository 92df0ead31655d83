"""entrypoints/shared.run_logged, the one way every engine runs a conversion step (converters, quantisers,
compilers): the step's output goes to its own log, and the cell's log says when each step starts (naming that
log) and how long it took, so a run stopped mid-step shows where its time went."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))

from shared import run_logged


def test_a_step_is_announced_in_the_cells_log_and_its_output_kept_in_its_own(tmp_path, capsys):
    log = tmp_path / "convert.log"
    seconds = run_logged("converter", [sys.executable, "-c", "print('layer 1 of 2'); print('layer 2 of 2')"], log)
    said = capsys.readouterr().out.splitlines()
    assert said[0] == f"converter: started (its output: {log})"
    assert said[1] == f"converter: done in {seconds:.1f} s" and seconds > 0
    assert log.read_text().splitlines()[1:] == ["layer 1 of 2", "layer 2 of 2"]  # after the command line
    assert log.read_text().startswith("$ " + sys.executable)


def test_a_failed_step_names_itself_its_exit_and_its_last_line(tmp_path, capsys):
    log = tmp_path / "quantise.log"
    command = [sys.executable, "-c", "import sys; print('loading'); sys.exit('out of range: layer 3')"]
    with pytest.raises(
        RuntimeError, match=r"^quantiser failed \(exit 1\): out of range: layer 3 \(log: .*quantise.log\)$"
    ):
        run_logged("quantiser", command, log)
    said = capsys.readouterr().out
    assert "quantiser: started" in said and "done in" not in said
