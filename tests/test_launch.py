"""Launching several processes: a stage that is not data parallel refuses a multi-process launch with a
clear error, through the real launcher, and a launch that accelerate does not tie together is refused
(the data-parallel stages themselves are tested in test_data_parallel.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tiller.training import LaunchError, make_accelerator

TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")


def test_one_process_gets_an_accelerator(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert make_accelerator().num_processes == 1
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert make_accelerator().num_processes == 1


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun (installed with torch) is not on the path")
def test_a_stage_that_is_not_data_parallel_refuses_two_processes(tiny_base_dir, tiny_world_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TILLER_QUIET": "1"}
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "tiller.cli", "sample", "--policy",
           str(tiny_base_dir), "--prompts", str(tiny_world_dir / "prompts.jsonl"), "--out",
           str(tmp_path / "samples.jsonl"), "n_prompts=4"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode != 0
    assert "`tiller sample` runs in one process" in done.stdout + done.stderr
    assert not (tmp_path / "samples.jsonl").exists()  # nothing written


def test_a_launch_accelerate_does_not_tie_together_is_refused(monkeypatch):
    make_accelerator()  # accelerate's process state now exists, for one process
    monkeypatch.setenv("WORLD_SIZE", "4")  # as if a launcher had started 4 that never joined one group
    with pytest.raises(LaunchError, match=r"launched as 4 processes \(WORLD_SIZE=4\), but accelerate set up 1"):
        make_accelerator()
