"""The vLLM rollout backend: the rollout server (tiller.rollout_server, in .venv-vllm) and the trainer's
client (tiller.vllm_rollout), for real.

The slow tests need the vLLM environment (`bash scripts/setup_vllm.sh`, which .ci/run runs); without it
they are skipped with that reason. What they show: the engine's greedy tokens equal the decode loop's on
the same weights, before and after a weight push (a LoRA policy's, merged); a request for weights the
server does not hold is refused; seeded answers repeat; and PPO, sample and bon run with sampler=vllm and
RL still raises the reward."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import test_data_parallel as dp  # pytest puts tests/ on the path
from tiller.config import ConfigError
from tiller.vllm_rollout import RolloutServer, RolloutServerError, VLLMConfig, start_server

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
inputs = dp.inputs  # the fixture: world, base, a one-process SFT model and RM


def vllm_ready() -> bool:
    return VLLM_PYTHON.is_file() and subprocess.run([str(VLLM_PYTHON), "-c", "import vllm"], capture_output=True,
                                                    timeout=300).returncode == 0


needs_vllm = pytest.mark.skipif(not vllm_ready(), reason="no vLLM environment: bash scripts/setup_vllm.sh")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_missing_server_is_a_clear_error():
    with pytest.raises(RolloutServerError, match="no rollout server at .*setup|no rollout server at .*rollout_server"):
        RolloutServer(f"http://127.0.0.1:{free_port()}").health()


def test_a_missing_vllm_environment_is_a_clear_error(tmp_path):
    cfg = VLLMConfig(python=str(tmp_path / "nowhere" / "python"))
    with pytest.raises(ConfigError, match="setup_vllm.sh"), start_server(tmp_path, cfg, tmp_path / "log"):
        pass


def test_vllm_sampler_refuses_fsdp():
    from tiller.stages.ppo import PPOConfig

    with pytest.raises(ConfigError, match="sampler=vllm with sharding=fsdp"):
        PPOConfig(sampler="vllm", sharding="fsdp").validate()


# --- with the engine ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_base_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("vllm")
    with start_server(tiny_base_dir, VLLMConfig(python=str(VLLM_PYTHON)), work / "server.log") as srv:
        srv.folder = work / "push"
        yield srv


def prompts(world: Path, n: int = 8) -> list:
    from tiller.data import read_records

    return [p.prompt for p in read_records(world / "prompts.jsonl", "prompt")][:n]


@pytest.mark.slow
@needs_vllm
def test_engine_greedy_tokens_equal_the_decode_loop_before_and_after_a_lora_push(server, tiny_base_dir, tiny_world_dir):
    from tiller.adapters import LoraConfig, apply_lora
    from tiller.models import load_policy
    from tiller.rollout import generate

    model, tok = load_policy(str(tiny_base_dir), trainable=False)
    ps = prompts(tiny_world_dir)
    server.sync(model, "base")
    loop = generate(model, tok, ps, temperature=0.0, max_new_tokens=24)
    engine = generate(model, tok, ps, temperature=0.0, max_new_tokens=24, server=server)
    assert engine.response_ids == loop.response_ids and engine.ended == loop.ended
    # a LoRA policy whose adapter has moved: the push merges it
    policy = apply_lora(model, LoraConfig(r=8, alpha=16.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    server.sync(policy, "moved")
    loop2 = generate(policy, tok, ps, temperature=0.0, max_new_tokens=24)
    engine2 = generate(policy, tok, ps, temperature=0.0, max_new_tokens=24, server=server)
    assert loop2.response_ids != loop.response_ids  # the push changed something worth checking
    assert engine2.response_ids == loop2.response_ids
    # seeded answers at temperature 1 repeat, and the seed matters
    a, b, c = (generate(policy, tok, ps, n=2, temperature=1.0, max_new_tokens=24, server=server, seed=s)
               for s in (3, 3, 4))
    assert a.response_ids == b.response_ids != c.response_ids


@pytest.mark.slow
@needs_vllm
def test_a_request_for_other_weights_is_refused_as_stale(server, tiny_base_dir):
    other = RolloutServer(server.url, folder=server.folder)
    other.version = "weights-nobody-pushed"
    with pytest.raises(RolloutServerError, match="other weights than this trainer"):
        other.sample([[1, 2, 3]], [0], temperature=0.0, top_p=1.0, max_new_tokens=4, stop_ids=[0])
    hurried = RolloutServer(server.url, timeout=1e-4)
    hurried.version = server.version
    with pytest.raises(RolloutServerError, match="gave no answer"):
        hurried.sample([[1, 2, 3]] * 64, None, temperature=0.0, top_p=1.0, max_new_tokens=200, stop_ids=[])


@pytest.mark.slow
@needs_vllm
def test_rl_with_the_vllm_sampler_raises_the_reward_model_score(tiny_base_dir, tiny_world_dir, tmp_path):
    from tiller.stages.ppo import PPOConfig, train_ppo

    rm = _short_rm(tiny_base_dir, tmp_path)
    cfg = PPOConfig(algo="rloo", iterations=8, rollout_batch=8, group_size=2, minibatch_size=8, ppo_epochs=2, lr=1e-3,
                    max_new_tokens=24, kl_coef=0.01, eval_every=0, eval_prompts=16, checkpoint_every=0, report_to=[],
                    sampler="vllm", vllm=VLLMConfig(python=str(VLLM_PYTHON)))
    train_ppo(cfg, str(tiny_base_dir), str(tiny_base_dir), tiny_world_dir / "prompts.jsonl", tmp_path / "pol",
              tmp_path / "logs", rm_path=str(rm))
    curve = json.loads((tmp_path / "pol" / "curve.json").read_text())
    assert curve[-1]["rm_score"] > curve[0]["rm_score"] + 0.3, curve
    assert curve[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # old logprobs recomputed by the trainer: ratio 1
    assert not (tmp_path / ".pol.rollout").exists()  # the engine's copy of the weights is cleaned up


def _short_rm(base: Path, work: Path) -> Path:
    from test_ppo import length_rankings
    from tiller.data import write_jsonl
    from tiller.stages.reward import RMConfig, train_rm

    write_jsonl(work / "rankings.jsonl", length_rankings(240, 4, seed=0))
    cfg = RMConfig(epochs=2, lr=2e-3, batch_size=16, max_len=96, valid_fraction=0.2, report_to=[])
    train_rm(cfg, str(base), [work / "rankings.jsonl"], None, work / "rm", work / "logs")
    return work / "rm"


@pytest.mark.slow
@needs_vllm
def test_sample_command_with_the_vllm_sampler(tiny_base_dir, tiny_world_dir, tmp_path):
    out = tmp_path / "samples.jsonl"
    cmd = [sys.executable, "-m", "tiller.cli", "sample", "--run", str(tmp_path), "--policy", str(tiny_base_dir),
           "--prompts", str(tiny_world_dir / "prompts.jsonl"), "--out", str(out), "k=3", "n_prompts=6",
           "max_new_tokens=16", "sampler=vllm", f"vllm.python={VLLM_PYTHON}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    sets = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(sets) == 6 and all(len(s["responses"]) == 3 for s in sets)
    assert not (tmp_path / ".samples.jsonl.rollout").exists()


@pytest.mark.slow
@needs_vllm
def test_two_processes_sampling_from_one_server_match_one_process(tmp_path, inputs):
    """Under torchrun the main process starts the server and pushes; each rank sends its share of the
    rollout. Per-answer seeds make the answers, and so the run, the same as one process's."""
    one, two = dp.two_runs(tmp_path, inputs)
    args = ["ppo", "--policy", str(inputs / "sft"), "--ref", str(inputs / "sft"), "--rm", str(inputs / "rm"),
            "--algo", "rloo", *dp.PPO, "group_size=2", "sampler=vllm", f"vllm.python={VLLM_PYTHON}"]
    dp.tiller(args, one)
    dp.tiller(args, two, processes=2)
    p1, p2 = one / "runs/default/policy", two / "runs/default/policy"
    answers = [[json.loads(line)["answers"] for line in (p / "curve-answers.jsonl").read_text().splitlines()]
               for p in (p1, p2)]
    assert answers[0] == answers[1]
    dp.assert_close_metrics(dp.metrics(p1), dp.metrics(p2))


@pytest.mark.slow
@needs_vllm
def test_bon_with_the_vllm_sampler_keeps_the_best_of_each_round(tmp_path, inputs):
    """Two rounds: the second samples from the first's fine-tuned policy, pushed to the same server."""
    one = dp.two_runs(tmp_path, inputs)[0]
    dp.tiller(["bon", "--policy", str(inputs / "sft"), "--rm", str(inputs / "rm"), "k=3", "n_prompts=8", "rounds=2",
               "max_new_tokens=12", "sft.epochs=1", "sft.batch_size=4", "sft.report_to=[]", "sampler=vllm",
               f"vllm.python={VLLM_PYTHON}"], one)
    history = json.loads((one / "runs/default/bon" / "tiller-manifest.json").read_text())["history"]
    assert [h["round"] for h in history] == [1, 2]
    assert all(h["mean_score_best"] > h["mean_score_all"] for h in history)
    assert not (one / "runs/default/.bon.rounds/rollout").exists()
