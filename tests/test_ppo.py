"""RL on the tiny world: sequences line up under left padding, the reward rises, and a killed run resumes
to the same numbers as one never killed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tiller.data import Ranking, write_jsonl
from tiller.models import load_policy
from tiller.runs import MANIFEST
from tiller.stages.best_of_n import select_best

WORDS = ["the", "river", "town", "was", "born", "in", "a", "baker", "is", "on"]


def length_rankings(n: int, k: int, seed: int, labelers: int = 1) -> list[Ranking]:
    """A planted preference that a policy can learn quickly: shorter answers rank higher (equal length ties).
    With ``labelers`` > 1 each answer set is ranked that many times, the later labelers swapping the top two
    groups now and then (labelers who disagree, as the RM and DPO merge them)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        responses = [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(k)]
        lengths = sorted({len(r.split()) for r in responses})
        groups = [[j for j, r in enumerate(responses) if len(r.split()) == n_words] for n_words in lengths]
        for lab in range(labelers):
            g = [groups[1], groups[0], *groups[2:]] if lab and len(groups) > 1 and rng.random() < 0.2 else groups
            out.append(Ranking(f"Tell me something, please ({i}).", responses, g,
                               labeler="rule" if labelers == 1 else f"l{lab}"))
    return out


@pytest.fixture(scope="module")
def short_rm(tiny_base_dir, tiny_world_dir, tmp_path_factory) -> Path:
    from tiller.stages.reward import RMConfig, train_rm

    work = tmp_path_factory.mktemp("short-rm")
    write_jsonl(work / "rankings.jsonl", length_rankings(240, 4, seed=0))
    cfg = RMConfig(epochs=2, lr=2e-3, batch_size=16, max_len=96, valid_fraction=0.2, report_to=[])
    metrics = train_rm(cfg, str(tiny_base_dir), [work / "rankings.jsonl"], None, work / "rm", work / "logs")
    assert metrics["eval/accuracy"] > 0.8, metrics  # the RM must have learned the rule for the RL tests to mean anything
    return work / "rm"


def test_select_best_keeps_the_highest_scored_answer_per_prompt():
    picked = select_best(["p", "q"], ["a", "b", "c", "d"], [0.1, 0.9, 0.5, -1.0], k=2)
    assert picked == [("p", "b", 0.9), ("q", "c", 0.5)]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "rloo"])
def test_rl_raises_the_reward_model_score(algo, tiny_base_dir, tiny_world_dir, short_rm, tmp_path):
    from tiller.stages.ppo import PPOConfig, train_ppo

    cfg = PPOConfig(algo=algo, iterations=8, rollout_batch=16 if algo == "ppo" else 8,
                    group_size=1 if algo == "ppo" else 2, minibatch_size=8, ppo_epochs=2, lr=1e-3,
                    value_lr=1e-3, max_new_tokens=24, kl_coef=0.01, eval_every=0, eval_prompts=16,
                    checkpoint_every=0, report_to=[])
    m = train_ppo(cfg, str(tiny_base_dir), str(tiny_base_dir), tiny_world_dir / "prompts.jsonl", tmp_path / "pol",
                  tmp_path / "logs", rm_path=str(short_rm))
    curve = json.loads((tmp_path / "pol" / "curve.json").read_text())
    assert curve[0]["iteration"] == 0 and curve[-1]["iteration"] == 8
    assert curve[-1]["rm_score"] > curve[0]["rm_score"] + 0.3, curve
    assert curve[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as the reference
    assert m["objective/kl"] > 0


def _ppo_cmd(base: Path, world: Path, rm: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "tiller.cli", "ppo", "--run", str(out.parent), "--policy", str(base),
            "--ref", str(base), "--rm", str(rm), "--prompts", str(world / "prompts.jsonl"), "--out", str(out),
            "--ptx-corpus", str(world / "corpus-train.jsonl"),
            "iterations=6", "rollout_batch=8", "minibatch_size=8", "ppo_epochs=1", "max_new_tokens=16",
            "checkpoint_every=2", "eval_every=3", "eval_prompts=8", "ptx_coef=0.5", "ptx_batch_size=4",
            "ptx_block=32", "adaptive_kl=true", "ema_decay=0.9", "report_to=[]"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(tiny_base_dir, tiny_world_dir, short_rm, tmp_path):
    env = {**os.environ, "TILLER_QUIET": "1"}
    # one run never killed
    subprocess.run(_ppo_cmd(tiny_base_dir, tiny_world_dir, short_rm, tmp_path / "a" / "pol"), check=True, env=env,
                   capture_output=True)
    # one run killed with SIGKILL as soon as its first checkpoint exists, then started again
    out = tmp_path / "b" / "pol"
    proc = subprocess.Popen(_ppo_cmd(tiny_base_dir, tiny_world_dir, short_rm, out), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out.with_name(".pol.ckpt") / "loop.json"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / MANIFEST).exists()  # killed before finishing: nothing that looks done
    subprocess.run(_ppo_cmd(tiny_base_dir, tiny_world_dir, short_rm, out), check=True, env=env, capture_output=True)
    a = json.loads((tmp_path / "a" / "pol" / MANIFEST).read_text())["metrics"]
    b = json.loads((out / MANIFEST).read_text())["metrics"]
    same = {k: v for k, v in a.items() if not k.startswith(("time/", "charts/"))}
    assert same, a
    for k, v in same.items():
        assert b[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    wa = load_policy(tmp_path / "a" / "pol")[0].state_dict()
    wb = load_policy(out)[0].state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
