"""Data parallelism through the real launcher: each training stage under ``torchrun --nproc_per_node 2``
(gloo, one thread per process) gives the numbers of one process with the same global batch, writes its
outputs once, and resumes under two processes. Minibatches are smaller than the rollout, so each
iteration takes several optimiser steps on minibatches drawn from the whole rollout. Tolerances: losses and metrics agree to 1e-4 relative
(float sums in another order; Adam then turns 1e-7 gradient differences into ~1e-5 weight differences),
sampled answers are identical (each answer has its own seeded random stream)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import run_command  # pytest puts tests/ on the path
from tiller.data import write_jsonl
from tiller.runs import MANIFEST

pytestmark = pytest.mark.slow

TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
if not os.path.exists(TORCHRUN):
    pytest.skip("torchrun (installed with torch) is not on the path", allow_module_level=True)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TILLER_QUIET": "1"}
PPO = ["iterations=4", "rollout_batch=8", "minibatch_size=4", "ppo_epochs=2", "eval_every=2", "eval_prompts=6",
       "checkpoint_every=2", "max_new_tokens=16", "report_to=[jsonl]"]


def tiller(args: list[str], cwd: Path, processes: int = 1, wait: bool = True):
    """``tiller ARGS`` in ``cwd`` (its run folder is cwd/runs/default), in one process or under torchrun.
    No ``--run``: torchrun's own parser would take it for its ``--run-path``."""
    launcher = ([TORCHRUN, "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else [sys.executable])
    return run_command([*launcher, "-m", "tiller.cli", *args], cwd, ENV, wait)


def metrics(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())["metrics"]


def assert_close_metrics(one: dict, two: dict, rel: float = 1e-4) -> None:
    compared = [k for k, v in one.items() if isinstance(v, float) and not k.startswith(("time", "seconds", "charts",
                                                                                      "pairs_per_s"))]
    assert compared
    for k in compared:
        assert two[k] == pytest.approx(one[k], rel=rel, abs=1e-6), k


def max_weight_difference(a: Path, b: Path, cls: str = "AutoModelForCausalLM") -> float:
    import transformers

    load = getattr(transformers, cls).from_pretrained
    kw = {"num_labels": 1} if "Sequence" in cls else {}
    x, y = load(str(a), **kw), load(str(b), **kw)
    return max(float((p - q).detach().abs().max()) for p, q in zip(x.parameters(), y.parameters(), strict=True))


def logged_steps(run: Path, stage: str) -> list[int]:
    rows = [json.loads(line) for line in (run / "logs/metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["stage"] == stage]


@pytest.fixture(scope="module")
def inputs(tiny_base_dir, tiny_world_dir, tmp_path_factory) -> Path:
    """A run folder with a world, base and SFT model, rankings and a reward model (one process)."""
    from test_ppo import length_rankings  # pytest puts tests/ on the path

    root = tmp_path_factory.mktemp("dp-inputs")
    shutil.copytree(tiny_world_dir, root / "world")
    shutil.copytree(tiny_base_dir, root / "base")
    write_jsonl(root / "rankings.jsonl", length_rankings(96, 4, seed=0))
    tiller(["sft", "--model", str(root / "base"), "--demos", str(root / "world/demos.jsonl"), "--out",
            str(root / "sft"), "epochs=1", "report_to=[]"], root)
    tiller(["rm", "--model", str(root / "sft"), "--rankings", str(root / "rankings.jsonl"), "--out",
            str(root / "rm"), "batch_size=8", "report_to=[]"], root)
    return root


def two_runs(tmp_path: Path, inputs: Path) -> tuple[Path, Path]:
    """Two working folders, each with runs/default/world, for a one-process and a two-process run."""
    out = []
    for name in ("one", "two"):
        run = tmp_path / name / "runs/default"
        run.mkdir(parents=True)
        (run / "world").symlink_to(inputs / "world")
        out.append(tmp_path / name)
    return out[0], out[1]


def test_pretrain_under_two_processes_matches_one(inputs, tmp_path):
    one, two = two_runs(tmp_path, inputs)
    args = ["pretrain", "max_tokens=12000", "batch_size=16", "n_layer=2", "n_embd=64", "n_head=2",
            "block_size=64", "vocab_size=400", "checkpoint_every=4", "report_to=[jsonl]"]
    tiller(args, one)
    tiller(args, two, processes=2)
    base1, base2 = one / "runs/default/base", two / "runs/default/base"
    assert_close_metrics(metrics(base1), metrics(base2))
    assert max_weight_difference(base1, base2) < 1e-4
    assert logged_steps(one / "runs/default", "pretrain") == logged_steps(two / "runs/default", "pretrain")


def test_sft_under_two_processes_matches_one_and_writes_once(inputs, tmp_path):
    one, two = two_runs(tmp_path, inputs)
    # batch 7 does not split evenly over 2 ranks, and the last batch of each epoch is short
    args = ["sft", "--model", str(inputs / "base"), "--demos", str(inputs / "world/demos.jsonl"), "epochs=2",
            "batch_size=7", "report_to=[jsonl]"]
    tiller(args, one)
    done = tiller(args, two, processes=2)
    sft1, sft2 = one / "runs/default/sft", two / "runs/default/sft"
    assert_close_metrics(metrics(sft1), metrics(sft2))
    assert max_weight_difference(sft1, sft2) < 1e-4
    # the main process alone logs, prints and writes
    assert logged_steps(one / "runs/default", "sft") == logged_steps(two / "runs/default", "sft")
    assert done.stdout.count("SFT model in") == 1
    assert not [p.name for p in sft2.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_rm_under_two_processes_matches_one(inputs, tmp_path):
    one, two = two_runs(tmp_path, inputs)
    args = ["rm", "--model", str(inputs / "sft"), "--rankings", str(inputs / "rankings.jsonl"), "batch_size=5",
            "epochs=2", "ensemble=2", "normalize_std=true", "report_to=[jsonl]"]
    tiller(args, one)
    tiller(args, two, processes=2)
    rm1, rm2 = one / "runs/default/rm", two / "runs/default/rm"
    assert_close_metrics(metrics(rm1), metrics(rm2))
    assert max_weight_difference(rm1, rm2, "AutoModelForSequenceClassification") < 1e-4


def test_dpo_under_two_processes_matches_one(inputs, tmp_path):
    one, two = two_runs(tmp_path, inputs)
    # 5 items a batch do not split evenly over 2 ranks; plackett_luce: one row per ranking on its item's forwards
    args = ["dpo", "--policy", str(inputs / "sft"), "--ref", str(inputs / "sft"), "--rankings",
            str(inputs / "rankings.jsonl"), "batch_size=5", "epochs=2", "lr=1e-3", "mode=plackett_luce",
            "report_to=[jsonl]"]
    tiller(args, one)
    tiller(args, two, processes=2)
    dpo1, dpo2 = one / "runs/default/policy-dpo", two / "runs/default/policy-dpo"
    assert_close_metrics(metrics(dpo1), metrics(dpo2))
    assert max_weight_difference(dpo1, dpo2) < 1e-4


@pytest.mark.parametrize("algo,extra", [
    ("ppo", ["ptx_coef=0.5", "ptx_batch_size=4", "grad_accum=2", "whiten_advantages=token"]),
    ("grpo", ["group_size=2", "rollout_batch=4"]),
    ("ppo", ["lora.r=4", "lr=3e-3"]),  # LoRA: the reference is the policy with its adapter disabled
])
def test_rl_under_two_processes_matches_one(inputs, tmp_path, algo, extra):
    one, two = two_runs(tmp_path, inputs)
    args = ["ppo", "--policy", str(inputs / "sft"), "--ref", str(inputs / "sft"), "--rm", str(inputs / "rm"),
            "--ptx-corpus", str(inputs / "world/corpus-train.jsonl"), "--algo", algo, *PPO, *extra]
    tiller(args, one)
    tiller(args, two, processes=2)
    p1, p2 = one / "runs/default/policy", two / "runs/default/policy"
    assert_close_metrics(metrics(p1), metrics(p2))
    answers = [[json.loads(line)["answers"] for line in (p / "curve-answers.jsonl").read_text().splitlines()]
               for p in (p1, p2)]
    assert answers[0] == answers[1]  # the same samples, though each process drew only half of them
    if "lora.r=4" not in extra:  # (an adapter folder has no full weights to compare)
        assert max_weight_difference(p1, p2) < 1e-4
    assert logged_steps(one / "runs/default", "ppo-policy") == logged_steps(two / "runs/default", "ppo-policy")


def test_fsdp_sharded_ppo_under_two_processes_matches_one_unsharded_process(inputs, tmp_path):
    """FSDP2: each rank holds half of every weight of the policy, value and reference; the run, its
    checkpoints (sharded, at iterations 2) and the saved folders (gathered) match one whole process."""
    from tiller.models import ScalarModel

    one, two = two_runs(tmp_path, inputs)
    args = ["ppo", "--policy", str(inputs / "sft"), "--ref", str(inputs / "sft"), "--rm", str(inputs / "rm"), *PPO]
    tiller(args, one)
    tiller([*args, "sharding=fsdp"], two, processes=2)
    p1, p2 = one / "runs/default/policy", two / "runs/default/policy"
    assert_close_metrics(metrics(p1), metrics(p2))
    assert max_weight_difference(p1, p2) < 1e-4
    v1, v2 = (ScalarModel.from_pretrained(p / "value") for p in (p1, p2))
    assert v1.kind == v2.kind == "value"
    assert max(float((a - b).detach().abs().max()) for a, b in zip(v1.parameters(), v2.parameters(), strict=True)) < 1e-4


def test_bon_under_two_processes_matches_one(inputs, tmp_path):
    one, two = two_runs(tmp_path, inputs)
    args = ["bon", "--policy", str(inputs / "sft"), "--rm", str(inputs / "rm"), "k=2", "n_prompts=10",
            "max_new_tokens=12", "sft.epochs=1", "sft.batch_size=4", "sft.report_to=[]"]
    tiller(args, one)
    tiller(args, two, processes=2)
    b1, b2 = one / "runs/default/bon", two / "runs/default/bon"
    picked = [(b / "../.bon.rounds/best-r1.jsonl").resolve().read_text() for b in (b1, b2)]
    assert picked[0] == picked[1]
    assert_close_metrics(metrics(b1), metrics(b2))


def test_killed_two_process_ppo_resumes_to_the_uninterrupted_numbers(inputs, tmp_path):
    one, two = two_runs(tmp_path, inputs)
    args = ["ppo", "--policy", str(inputs / "sft"), "--ref", str(inputs / "sft"), "--rm", str(inputs / "rm"),
            *PPO, "iterations=6"]
    tiller(args, one)
    proc = tiller(args, two, processes=2, wait=False)
    ckpt = two / "runs/default/.policy.ckpt/loop.json"
    deadline = time.time() + 300
    while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert ckpt.is_file(), "no checkpoint was written before the run ended"
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    proc.wait()
    assert not (two / "runs/default/policy" / MANIFEST).exists()
    tiller(args, two, processes=2)
    p1, p2 = one / "runs/default/policy", two / "runs/default/policy"
    assert_close_metrics({k: v for k, v in metrics(p1).items() if k.startswith("eval/")}, metrics(p2))
    assert max_weight_difference(p1, p2) < 1e-4


def test_a_batch_that_does_not_split_over_the_processes_is_refused(inputs, tmp_path):
    _, two = two_runs(tmp_path, inputs)
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "tiller.cli", "ppo", "--policy",
           str(inputs / "sft"), "--ref", str(inputs / "sft"), "--rm", str(inputs / "rm"), *PPO, "rollout_batch=7",
           "minibatch_size=7"]
    done = subprocess.run(cmd, env=ENV, cwd=two, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "rollout_batch 7 must be a multiple of the 2 processes" in done.stdout + done.stderr


def test_rollout_answers_do_not_depend_on_the_batching(tiny_base_dir):
    """The property the two-process runs rest on: with a seed per answer, an answer is the same whether it
    is sampled with all the others or in a block of its own."""
    from tiller.models import load_policy
    from tiller.rollout import generate

    model, tok = load_policy(tiny_base_dir, trainable=False)
    prompts = [f"Tell me about the river ({i})." for i in range(6)]
    seeds = list(range(100, 112))
    whole = generate(model, tok, prompts, n=2, max_new_tokens=12, row_seeds=seeds)
    parts = [generate(model, tok, prompts[lo:hi], n=2, max_new_tokens=12, batch_size=3, row_seeds=seeds[2 * lo:2 * hi])
             for lo, hi in ((0, 1), (1, 4), (4, 6))]
    assert [t for p in parts for t in p.texts] == whole.texts
    assert len(set(whole.texts)) > 1
    lps = [lp for p in parts for lp in p.logprobs]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(lps, whole.logprobs, strict=True))
