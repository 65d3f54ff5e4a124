"""The pieces of a PPO / critic-free iteration, each against numbers worked by hand or against a second way
of computing the same thing: advantages and the KL term, whitening, the config's refusals, ``grad_accum``
as memory only, the entropy at the sampling temperature, and the ptx draw."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from tiller.config import ConfigError
from tiller.losses import MovingBaseline, entropy_from_logits, masked_mean
from tiller.models import ScalarModel, enable_gradient_checkpointing
from tiller.rl import RunningMoments, build_sequences, policy_forward, value_forward
from tiller.stages.ppo import (
    Experience,
    PPOConfig,
    advantages_and_returns,
    ptx_batch,
    shaped_scores,
    train_epochs,
)
from tiller.training import make_accelerator


def one_token_kl(kl: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """old logprobs, reference logprobs and mask of one-token answers whose KL is ``kl``."""
    old = torch.tensor(kl)[:, None]
    return old, torch.zeros_like(old), torch.ones_like(old)


def test_grpo_ties_give_no_advantage_beyond_the_kl_term():
    """Scores [1,1,1,1] and KL [.5,.3,.8,.1]: with the KL inside the group statistics (the old code) GRPO
    gave [-0.25, 0.41, -1.24, 1.07]; from the score alone the group has nothing to prefer, and what is left
    is the KL penalty itself, -beta * KL."""
    old, ref, mask = one_token_kl([0.5, 0.3, 0.8, 0.1])
    cfg = PPOConfig(algo="grpo", group_size=4, rollout_batch=1, minibatch_size=4)
    adv, ret, kl = advantages_and_returns(cfg, torch.ones(4), old, ref, torch.zeros(4, 1), mask, 0.05,
                                          MovingBaseline())
    torch.testing.assert_close(adv[:, 0], -0.05 * torch.tensor([0.5, 0.3, 0.8, 0.1]))
    torch.testing.assert_close(kl[:, 0], torch.tensor([0.5, 0.3, 0.8, 0.1]))
    assert not ret.any()
    from tiller.losses import grpo_advantages

    inside = grpo_advantages(torch.ones(4) - 0.05 * torch.tensor([0.5, 0.3, 0.8, 0.1]), 4)  # the old formula
    torch.testing.assert_close(inside, torch.tensor([-0.25, 0.41, -1.24, 1.07]), atol=0.02, rtol=0)


def test_rloo_groups_stay_zero_sum_whatever_the_lengths():
    """Scores [.5,-.5,.5,-.5] in groups of 2 give RLOO advantages [1,-1,1,-1]; with lengths 8/1/8/1: per-token whitening (the old default) made them
    [0.34, -2.75, 0.34, -2.75]; unwhitened (auto for rloo) they stay [1, -1, 1, -1] on every token."""
    lengths = [8, 1, 8, 1]
    mask = torch.tensor([[1.0] * n + [0.0] * (8 - n) for n in lengths])
    zeros = torch.zeros(4, 8)
    cfg = PPOConfig(algo="rloo", group_size=2, rollout_batch=2, minibatch_size=4)
    adv, _, _ = advantages_and_returns(cfg, torch.tensor([0.5, -0.5, 0.5, -0.5]), zeros, zeros, zeros, mask, 0.05,
                                       MovingBaseline())
    torch.testing.assert_close(adv, torch.tensor([[1.0], [-1.0], [1.0], [-1.0]]) * mask)
    token = PPOConfig(algo="rloo", group_size=2, rollout_batch=2, minibatch_size=4, whiten_advantages="token")
    whitened, _, _ = advantages_and_returns(token, torch.tensor([0.5, -0.5, 0.5, -0.5]), zeros, zeros, zeros, mask,
                                            0.05, MovingBaseline())
    assert whitened[1, 0].item() == pytest.approx(-2.75, abs=0.01)  # what the old default did, still on request


def test_ppo_still_whitens_per_token_and_adds_the_score_on_the_last_token():
    old, ref, mask = one_token_kl([0.0, 0.0])
    cfg = PPOConfig(whiten_advantages="off", lam=1.0)
    adv, ret, _ = advantages_and_returns(cfg, torch.tensor([2.0, -1.0]), old, ref, torch.tensor([[0.5], [0.5]]),
                                         mask, 0.05, MovingBaseline())
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.5, -1.5]))  # score - V
    torch.testing.assert_close(ret[:, 0], torch.tensor([2.0, -1.0]))
    on, _, _ = advantages_and_returns(PPOConfig(), torch.tensor([2.0, -1.0]), old, ref,
                                      torch.tensor([[0.5], [0.5]]), mask, 0.05, MovingBaseline())
    assert on.mean().item() == pytest.approx(0.0, abs=1e-6) and on.std().item() == pytest.approx(1.0, abs=1e-4)


def test_sequence_whitening_weighs_each_answer_once():
    mask = torch.tensor([[1.0] * 8, [1.0] + [0.0] * 7])
    zeros = torch.zeros(2, 8)
    cfg = PPOConfig(algo="reinforce", whiten_advantages="sequence", rollout_batch=2, minibatch_size=2)
    adv, _, _ = advantages_and_returns(cfg, torch.tensor([3.0, 1.0]), zeros, zeros, zeros, mask, 0.0,
                                       MovingBaseline())
    # first batch: centred on its mean 2 -> [1, -1]; over the two answers mean 0, std sqrt(2)
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.0, -1.0]) / 2**0.5)


@pytest.mark.parametrize("bad,match", [(dict(temperature=0.0), "temperature must be > 0"),
                                       (dict(top_p=0.9), "top_p must be 1.0"),
                                       (dict(algo="ppo", whiten_advantages="sequence"), "ppo whitens per token"),
                                       (dict(ptx_coef=1.0, ptx_batch_size=3, grad_accum=2), "ptx_batch_size"),
                                       (dict(baseline_decay=1.0), "baseline_decay")])
def test_config_refuses_settings_that_break_the_maths(bad, match):
    with pytest.raises(ConfigError, match=match):
        PPOConfig(**bad).validate()


def test_answers_cut_off_before_their_end_marker_are_penalised_by_default():
    cfg = PPOConfig()
    assert cfg.missing_eos_penalty > 0  # on by default, as in lm-human-preferences
    got = shaped_scores(cfg, torch.tensor([0.5, 0.5]), torch.tensor([True, False]), RunningMoments())
    torch.testing.assert_close(got, torch.tensor([0.5, 0.5 - cfg.missing_eos_penalty]))


def test_the_ptx_draw_depends_on_seed_iteration_and_step_only():
    blocks = torch.arange(40).view(20, 2)
    cfg = PPOConfig(ptx_batch_size=4)
    torch.testing.assert_close(ptx_batch(blocks, cfg, 3, 1), ptx_batch(blocks, PPOConfig(ptx_batch_size=4, grad_accum=2), 3, 1))
    assert not torch.equal(ptx_batch(blocks, cfg, 3, 1), ptx_batch(blocks, cfg, 3, 2))
    assert ptx_batch(blocks, cfg, 0, 0).shape == (4, 2)


# --- the update epochs on a tiny random model ------------------------------------------------------------

VOCAB = 32


def tiny_models(seed: int = 0) -> tuple[GPT2LMHeadModel, ScalarModel]:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=1,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3)
    return GPT2LMHeadModel(cfg), ScalarModel(GPT2ForSequenceClassification(copy.deepcopy(cfg)))


def experience(policy, value_model, temperature: float) -> Experience:
    """Eight answers of lengths 1..8 to prompts of lengths 2..5, with the policy's own logprobs as the old ones
    and fixed random advantages and returns."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, VOCAB, (2 + i % 4,), generator=g).tolist() for i in range(8)]
    responses = [torch.randint(1, VOCAB, (1 + i,), generator=g).tolist() for i in range(8)]
    b = build_sequences(prompts, responses, 0)
    with torch.no_grad():
        old = policy_forward(policy, b, temperature)[0]
        values = value_forward(value_model, b)
    adv = torch.randn(b.mask.shape, generator=g) * b.mask
    returns = torch.randn(b.mask.shape, generator=g) * b.mask
    return Experience(b, old, values, adv, returns)


def run_epochs(grad_accum: int, lr: float = 0.1, temperature: float = 1.0, minibatch: int = 4, ema=None,
               precision: str = "no", checkpointing: bool = False):
    policy, value_model = tiny_models()
    if checkpointing:
        enable_gradient_checkpointing(policy)
        enable_gradient_checkpointing(value_model)
    exp = experience(policy, value_model, temperature)
    cfg = PPOConfig(rollout_batch=8, minibatch_size=minibatch, grad_accum=grad_accum, ppo_epochs=1, ptx_coef=0.5,
                    ptx_batch_size=4, temperature=temperature, seed=3)
    blocks = torch.randint(1, VOCAB, (10, 6), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(policy.parameters(), lr=lr)
    v_opt = torch.optim.SGD(value_model.parameters(), lr=lr)
    stats = train_epochs(replace(cfg, mixed_precision=precision), make_accelerator(), policy, opt, value_model, v_opt, exp, blocks, it=0, ema=ema)
    return policy, value_model, stats, exp


def test_grad_accum_changes_memory_not_the_update():
    """Micro-batches hold answers of different lengths, so the old mean of micro-batch token means (and a
    ptx batch drawn per micro-batch) moved the weights differently from one pass over the minibatch."""
    p1, v1, _, _ = run_epochs(grad_accum=1)
    p2, v2, _, _ = run_epochs(grad_accum=2)
    p4, _, _, _ = run_epochs(grad_accum=4)
    base, _ = tiny_models()
    moved = max((a - b).abs().max().item() for a, b in zip(p1.parameters(), base.parameters(), strict=True))
    assert moved > 1e-3  # the update is not a no-op, so equality below means something
    for a, b, c in zip(p1.parameters(), p2.parameters(), p4.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-5)
    for a, b in zip(v1.parameters(), v2.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_changes_memory_not_the_update():
    """Recomputing activations in the backward pass gives the same PPO update (policy and value model)."""
    p1, v1, _, _ = run_epochs(grad_accum=2)
    p2, v2, _, _ = run_epochs(grad_accum=2, checkpointing=True)
    assert p2.transformer.gradient_checkpointing and v2.hf.transformer.gradient_checkpointing
    for a, b in zip([*p1.parameters(), *v1.parameters()], [*p2.parameters(), *v2.parameters()], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_bf16_mixed_precision_keeps_fp32_weights_and_approximates_the_fp32_update():
    """Under ``mixed_precision: bf16`` the forwards run in bf16 (autocast) while the weights and the
    optimiser stay fp32: the update is close to the fp32 one but not equal to it (so bf16 really ran)."""
    base, _ = tiny_models()
    p32, _, _, _ = run_epochs(grad_accum=1)
    p16, _, _, _ = run_epochs(grad_accum=1, precision="bf16")
    assert {p.dtype for p in p16.parameters()} == {torch.float32}
    d32 = torch.cat([(a - b).flatten() for a, b in zip(p32.parameters(), base.parameters(), strict=True)])
    d16 = torch.cat([(a - b).flatten() for a, b in zip(p16.parameters(), base.parameters(), strict=True)])
    assert not torch.equal(d32, d16)
    assert torch.nn.functional.cosine_similarity(d32, d16, dim=0) > 0.95


def test_the_ema_follows_every_optimiser_step():
    """Two minibatches of four: two optimiser steps, two EMA updates (the old code updated once per rollout
    batch); with bias correction and a decay of 0 the average is the final weights exactly."""
    from tiller.rl import EMA

    policy, _ = tiny_models()
    ema = EMA(policy, decay=0.0)
    trained, _, _, _ = run_epochs(grad_accum=1, ema=ema)
    assert ema.state_dict()["n"] == 2
    for name, w in trained.state_dict().items():
        if w.dtype.is_floating_point:
            torch.testing.assert_close(ema.average()[name], w)


def test_logged_entropy_is_the_sampling_distributions():
    """At temperature 0.5 the policy samples from softmax(logits / 0.5); its entropy is what is logged."""
    _, _, stats, exp = run_epochs(grad_accum=1, lr=0.0, temperature=0.5, minibatch=8)
    policy, _ = tiny_models()
    with torch.no_grad():
        _, logits = policy_forward(policy, exp.batch, 1.0)
    want = masked_mean(entropy_from_logits(logits / 0.5), exp.batch.mask).item()
    at_one = masked_mean(entropy_from_logits(logits), exp.batch.mask).item()
    assert abs(want - at_one) > 0.05  # the two differ, so the test tells them apart
    assert stats["policy/entropy"] == pytest.approx(want, rel=1e-5)
    assert "val/ratio" not in stats and stats["policy/ratio"] == pytest.approx(1.0, abs=1e-5)


# --- a tiny run end to end ---------------------------------------------------------------------------------


def length_reward(prompts, responses):
    """A reward source for the run below (``kind: python``): longer answers score higher."""
    return [len(r) / 20 for r in responses]


def test_a_tiny_run_logs_the_kl_coefficient_it_used_and_leaves_its_answers_for_an_outside_judge(
        tiny_base_dir, tiny_world_dir, tmp_path):
    """With the adaptive controller, the coefficient moves after every iteration; iteration 1's rewards used
    the initial one, and that is what ``objective/kl_coef`` and ``objective/non_score_reward`` must show (the
    old code logged the coefficient after its update). The evaluation points' answers go to the policy
    folder, not to a gold judge."""
    import json

    from tiller.scoring import RewardSource
    from tiller.stages.ppo import ANSWERS_FILE, train_ppo
    from tiller.tracking import read_metrics

    cfg = PPOConfig(algo="reinforce", iterations=2, rollout_batch=4, minibatch_size=4, ppo_epochs=1,
                    max_new_tokens=8, kl_coef=0.5, adaptive_kl=True, kl_target=0.01, kl_horizon=10.0,
                    eval_every=1, eval_prompts=3, checkpoint_every=0, report_to=[],
                    rewards=[RewardSource(kind="python", path="test_ppo_maths:length_reward", name="len")])
    out = tmp_path / "pol"
    train_ppo(cfg, str(tiny_base_dir), str(tiny_base_dir), tiny_world_dir / "prompts.jsonl", out, tmp_path / "logs")
    rows = [r for r in read_metrics(tmp_path / "logs", "ppo-pol") if "objective/kl_coef" in r]
    assert rows[0]["objective/kl_coef"] == pytest.approx(0.5)
    assert rows[0]["objective/non_score_reward"] == pytest.approx(-0.5 * rows[0]["objective/kl"])
    assert rows[1]["objective/kl_coef"] != pytest.approx(0.5)  # the controller did move in between
    assert rows[1]["objective/non_score_reward"] == pytest.approx(-rows[1]["objective/kl_coef"] * rows[1]["objective/kl"])
    curve = json.loads((out / "curve.json").read_text())
    said = [json.loads(line) for line in (out / ANSWERS_FILE).read_text().splitlines()]
    assert [p["iteration"] for p in curve] == [s["iteration"] for s in said] == [0, 1, 2]
    assert all("gold_score" not in p for p in curve)
    assert all(len(s["prompts"]) == len(s["answers"]) == 3 for s in said)
