"""A stage launched as several processes stops with a clear error, through the real launcher: today each
rank would repeat the whole run and overwrite the same files (and on a CPU without ACCELERATE_USE_CPU the
ranks are not even tied together), so training on must not happen silently."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tiller.training import LaunchError, make_accelerator


def test_one_process_gets_an_accelerator(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert make_accelerator().num_processes == 1
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert make_accelerator().num_processes == 1


TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun (installed with torch) is not on the path")
def test_torchrun_with_two_processes_is_refused_with_a_clear_error(tiny_base_dir, tiny_world_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TILLER_QUIET": "1"}
    # no --run: torchrun's own parser takes it for an abbreviation of --run-path; the run folder is then
    # runs/default under the working directory, here tmp_path
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "tiller.cli", "sft", "--model",
           str(tiny_base_dir), "--demos", str(tiny_world_dir / "demos.jsonl"), "--out", str(tmp_path / "sft"),
           "epochs=1", "report_to=[]"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode != 0
    assert "launched as 2 processes" in done.stdout + done.stderr
    assert not (tmp_path / "sft").exists()  # nothing written


def test_the_error_names_the_process_count(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(LaunchError, match=r"launched as 4 processes \(WORLD_SIZE=4\)"):
        make_accelerator()
