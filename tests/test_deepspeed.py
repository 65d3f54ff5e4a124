"""DeepSpeed ZeRO-2 and ZeRO-3 through the real launcher: ``accelerate launch --config_file
configs/accelerate/deepspeed-zero{2,3}.yaml`` with two CPU processes (gloo, one thread each).

``tiller sft`` and ``tiller rm`` give the numbers of one process with the same global batch and write
folders that plain transformers loads; under ZeRO-3 the parameters really are partitioned; a pretrain
killed mid-run resumes from DeepSpeed's checkpoint to the uninterrupted numbers. Tolerances are
those of tests/test_data_parallel.py: metrics to 1e-4 relative, weights to 1e-4 absolute. DeepSpeed
reduces gradients in flattened buckets, in another order than one process sums them, and Adam turns
1e-7 gradient differences into ~1e-5 weight differences (measured: 2e-5 on the SFT weights, metrics equal
to ~1e-7). The first DeepSpeed start compiles a CPU op (~1.5 min) into ``TORCH_EXTENSIONS_DIR``, by default
the repository's .cache/torch_extensions, where scripts/setup.sh compiles it once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

import test_data_parallel as dp  # pytest puts tests/ on the path
from helpers import run_command
from tiller.runs import MANIFEST

pytestmark = pytest.mark.slow

if importlib.util.find_spec("deepspeed") is None:
    pytest.skip("deepspeed is not installed (scripts/setup.sh installs it; pip extra `deepspeed`)",
                allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs/accelerate"
EXTENSIONS = os.environ.get("TORCH_EXTENSIONS_DIR") or str(ROOT / ".cache/torch_extensions")
COMPILED = list(Path(EXTENSIONS).glob("deepspeed_shm_comm/*.so"))
if not COMPILED and not (shutil.which("g++") and shutil.which("ninja")):
    pytest.skip(f"DeepSpeed's CPU op is neither compiled in {EXTENSIONS} nor compilable here (g++ and ninja)",
                allow_module_level=True)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TILLER_QUIET": "1", "TORCH_EXTENSIONS_DIR": EXTENSIONS}

inputs = dp.inputs  # the fixture: world, base, a one-process SFT model and RM, rankings


def launch(zero: int, target: list[str], cwd: Path, wait: bool = True):
    """``accelerate launch`` of ``target`` (``-m tiller.cli ...`` or a script) under the ZeRO-``zero`` config."""
    config = CONFIGS / f"deepspeed-zero{zero}.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--main_process_port", "0",
           *target]
    return run_command(cmd, cwd, ENV, wait, timeout=900)


def tiller(args: list[str], cwd: Path, zero: int = 0, wait: bool = True):
    """``tiller ARGS`` in one plain process (``zero=0``) or in two under DeepSpeed ZeRO-``zero``."""
    if zero:
        return launch(zero, ["-m", "tiller.cli", *args], cwd, wait)
    return dp.tiller(args, cwd)


def test_zero3_partitions_the_parameters(tmp_path):
    launch(3, [str(ROOT / "tests/dist/deepspeed_worker.py"), str(tmp_path)], tmp_path)
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    whole = ranks[0]["whole"]
    for r, rep in enumerate(ranks):
        assert rep["zero_stage"] == 3 and rep["world_size"] == 2
        assert rep["ds_numel"] == whole
        assert rep["held"] < 0.6 * whole  # half of every parameter (padded to split evenly)
        assert rep["gathered"] == whole and rep["released"] == 0
        assert rep["loaded_whole"] == whole  # training.loading_whole
        assert rep["loaded_plain"] == 0  # what it prevents: transformers makes the model partitioned
        assert rep["snapshot"] == (whole if r == 0 else None)  # the whole weights, on the main process alone
    assert sum(rep["held"] for rep in ranks) >= whole
    assert ranks[0]["gathered_loss"] == ranks[1]["gathered_loss"]


@pytest.mark.parametrize("zero", [2, 3])
def test_sft_under_deepspeed_matches_one_process(inputs, tmp_path, zero):
    """Batch 7 does not split evenly over 2 ranks and each epoch ends short; the epoch is picked by the RM
    score of greedy answers, sampled from the gathered model under ZeRO-3."""
    one, two = dp.two_runs(tmp_path, inputs)
    args = ["sft", "--model", str(inputs / "base"), "--demos", str(inputs / "world/demos.jsonl"), "epochs=2",
            "batch_size=7", f"select_by_rm={inputs / 'rm'}", "rm_eval_prompts=6", "report_to=[jsonl]"]
    tiller(args, one)
    done = tiller(args, two, zero)
    sft1, sft2 = one / "runs/default/sft", two / "runs/default/sft"
    dp.assert_close_metrics(dp.metrics(sft1), dp.metrics(sft2))
    assert dp.max_weight_difference(sft1, sft2) < 1e-4  # plain AutoModelForCausalLM.from_pretrained
    assert dp.logged_steps(one / "runs/default", "sft") == dp.logged_steps(two / "runs/default", "sft")
    assert done.stdout.count("SFT model in") == 1


def test_rm_ensemble_under_zero3_matches_one_process(inputs, tmp_path):
    """Two members (the second loads after the ZeRO-3 accelerator exists), batch 5 of K=4 answers split 3/2,
    evaluation and normalisation on both ranks."""
    one, two = dp.two_runs(tmp_path, inputs)
    args = ["rm", "--model", str(inputs / "sft"), "--rankings", str(inputs / "rankings.jsonl"), "batch_size=5",
            "epochs=2", "ensemble=2", "normalize_std=true", "report_to=[jsonl]"]
    tiller(args, one)
    tiller(args, two, zero=3)
    rm1, rm2 = one / "runs/default/rm", two / "runs/default/rm"
    dp.assert_close_metrics(dp.metrics(rm1), dp.metrics(rm2))
    for sub in ("", "members/1"):
        assert dp.max_weight_difference(rm1 / sub, rm2 / sub, "AutoModelForSequenceClassification") < 1e-4


@pytest.mark.parametrize("zero", [2, 3])
def test_killed_pretrain_resumes_from_deepspeed_checkpoint_to_the_uninterrupted_numbers(inputs, tmp_path, zero):
    one, two = dp.two_runs(tmp_path, inputs)
    args = ["pretrain", "max_tokens=60000", "batch_size=16", "n_layer=2", "n_embd=64", "n_head=2", "block_size=64",
            "vocab_size=400", "checkpoint_every=4", "report_to=[jsonl]"]  # 58 steps
    tiller(args, one)
    proc = tiller(args, two, zero, wait=False)
    run = two / "runs/default"
    deadline, step = time.time() + 600, 0
    while step < 12 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
        for f in run.glob(".base.ckpt-*/loop.json"):
            with contextlib.suppress(OSError, ValueError):  # replaced while read
                step = json.loads(f.read_text())["step"]
    assert step >= 12, "no checkpoint past step 12 before the run ended"
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    proc.wait()
    assert not (run / "base" / MANIFEST).exists()
    ckpt = next(run.glob(".base.ckpt-*"))
    assert len(list(ckpt.rglob("*optim_states.pt"))) == 2  # DeepSpeed's checkpoint: each rank's partition
    restart = time.time()
    tiller(args, two, zero)
    base1, base2 = one / "runs/default/base", run / "base"
    dp.assert_close_metrics(dp.metrics(base1), dp.metrics(base2))
    assert dp.max_weight_difference(base1, base2) < 1e-4
    # it resumed: the second run's first log line comes after the checkpoint (a restart would log step 10)
    rows = [json.loads(line) for line in (run / "logs/metrics.jsonl").read_text().splitlines()]
    assert min(r["step"] for r in rows if r["stage"] == "pretrain" and r["time"] > restart) > 10
