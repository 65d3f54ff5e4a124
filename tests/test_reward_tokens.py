"""RL scores what the policy sampled: the reward model reads the sampled token ids (not a re-encoding of
their decoded, stripped text with an end marker appended), an answer cut off by the length limit is scored
as unfinished, and sampling stops at a role header so that no token the policy is trained on is invisible
to the reward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiller.chat import END, ROLE_TOKENS
from tiller.config import ConfigError
from tiller.models import ScalarModel, load_tokenizer
from tiller.rollout import kept_positions, sampling_stops
from tiller.scoring import CompositeReward, RewardScorer, RewardSource


@pytest.fixture(scope="module")
def random_rm(tiny_base_dir, tmp_path_factory) -> Path:
    """The tiny base model with a random scalar head, saved as an RM folder (gain 2, bias 0.5)."""
    tok = load_tokenizer(tiny_base_dir)
    rm = ScalarModel.from_pretrained(tiny_base_dir, tok)
    torch.manual_seed(0)
    torch.nn.init.normal_(rm.hf.score.weight, std=1.0)
    rm.bias, rm.gain = 0.5, 2.0
    out = tmp_path_factory.mktemp("random-rm")
    rm.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_the_rm_scores_the_sampled_tokens_and_an_unfinished_answer_as_unfinished(random_rm):
    tok = load_tokenizer(random_rm)
    reward = CompositeReward([RewardSource(kind="rm", path=str(random_rm), name="rm")], device="cpu", policy_tok=tok)
    scorer = reward.scorers[0]
    assert reward.by_ids == [True]
    prompt = "Tell me about the river town."
    prompt_ids = tok(f"{ROLE_TOKENS['user']}\n{prompt}{END}\n{ROLE_TOKENS['assistant']}\n",
                     add_special_tokens=False)["input_ids"]
    cut_off = tok("  The river town was", add_special_tokens=False)["input_ids"]  # no end marker: length limit
    finished = tok(f"The town.{END}", add_special_tokens=False)["input_ids"]
    token_ids = [(prompt_ids, cut_off), (prompt_ids, finished)]
    texts = ["The river town was", "The town."]  # what clean_response makes of them (stripped, marker cut)
    total, parts = reward.score([prompt, prompt], texts, [False, True], token_ids)
    model = scorer.models[0]
    with torch.no_grad():
        by_hand = [model.normalise(model(torch.tensor([p + r]), torch.ones(1, len(p + r), dtype=torch.long))).item()
                   for p, r in token_ids]
    torch.testing.assert_close(total, torch.tensor(by_hand))
    torch.testing.assert_close(parts["rm"], total)
    as_if_finished = scorer.score([prompt], texts[:1])[0]  # the old path: re-encoded text + <|end|>
    assert abs(as_if_finished - by_hand[0]) > 1e-3


def test_text_scoring_keeps_an_unfinished_answer_unfinished(random_rm):
    scorer = RewardScorer(str(random_rm), device="cpu")
    seq_done, seq_cut = scorer.encode(["Hi"] * 2, ["Hello there"] * 2, [True, False])
    end = scorer.tok.convert_tokens_to_ids(END)
    assert seq_done[-1] == end and seq_cut[-1] != end and seq_done[:-1] == seq_cut


def test_a_reward_model_with_another_vocabulary_reads_text(random_rm, tmp_path):
    other = load_tokenizer(random_rm)
    other.add_tokens(["zyzzyva"])
    reward = CompositeReward([RewardSource(kind="rm", path=str(random_rm))], device="cpu", policy_tok=other)
    assert reward.by_ids == [False]


def test_sampling_stops_at_a_role_header_without_calling_the_answer_finished(tiny_base_dir):
    tok = load_tokenizer(tiny_base_dir)
    stops, ends = sampling_stops(tok)
    end, user = tok.convert_tokens_to_ids(END), tok.convert_tokens_to_ids(ROLE_TOKENS["user"])
    assert end in ends and user in stops and user not in ends
    pad = tok.pad_token_id
    assert kept_positions([7, 8, end, pad], set(stops), pad, ends) == ([0, 1, 2], True)
    assert kept_positions([7, user, 9, end], set(stops), pad, ends) == ([0, 1], False)  # 9 is never trained on
    assert kept_positions([7, 8, 9], set(stops), pad, ends) == ([0, 1, 2], False)  # cut by the length limit


def test_the_value_model_starts_on_the_scale_of_the_rewards(random_rm, tiny_base_dir):
    """PPO's value model comes from the RM with its normalisation (gain 2, bias 0.5) folded into the head, so
    at the last token it predicts the normalised reward, not the raw head's output."""
    from tiller.stages.ppo import PPOConfig, load_models

    m = load_models(PPOConfig(), str(tiny_base_dir), str(tiny_base_dir),
                    [RewardSource(kind="rm", path=str(random_rm))])
    ids = m.tok("<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>", add_special_tokens=False)["input_ids"]
    x, mask = torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)
    with torch.no_grad():
        value_at_end = m.value.token_values(x, mask)[0, -1].item()
    want = RewardScorer(str(random_rm), device="cpu").score_ids([(ids[:-3], ids[-3:])])[0]
    assert value_at_end == pytest.approx(want, abs=1e-4)
    raw = RewardScorer(str(random_rm), device="cpu").models[0](x, mask).item()
    assert abs(raw - want) > 0.1  # the raw head (the old initialisation) is on another scale
    assert m.ref.training is False and not any(p.requires_grad for p in m.ref.parameters())


def test_an_answer_ended_by_the_models_eos_is_read_at_the_end_marker(random_rm):
    """The RM learned answers rendered with <|end|> and reads the last token; an answer the policy ended
    with its own EOS (here the tokenizer's end-of-text, not <|end|>) is scored as if it ended with <|end|>."""
    scorer = RewardScorer(str(random_rm), device="cpu")
    tok = scorer.tok
    end = tok.convert_tokens_to_ids(END)
    assert tok.eos_token_id is not None and tok.eos_token_id != end
    prompt = tok("<|user|>\nHi<|end|>\n<|assistant|>\n", add_special_tokens=False)["input_ids"]
    words = tok("Hello there.", add_special_tokens=False)["input_ids"]
    by_eos, by_end, unfinished = scorer.score_ids([(prompt, words + [tok.eos_token_id]), (prompt, words + [end]),
                                                   (prompt, words)])
    assert by_eos == pytest.approx(by_end) and abs(by_end - unfinished) > 1e-4


def test_a_value_folder_cannot_be_used_as_a_reward_model(random_rm, tmp_path):
    value = ScalarModel.value_from(random_rm)
    value.save_pretrained(tmp_path / "value")
    load_tokenizer(random_rm).save_pretrained(tmp_path / "value")
    with pytest.raises(ConfigError, match="is a value model"):
        RewardScorer(str(tmp_path / "value"), device="cpu")


def test_the_value_model_does_not_start_from_a_penalty_rm(random_rm, tiny_base_dir):
    """A rule RM used as a penalty does not predict the return; with no summed RM the value head starts at 0."""
    from tiller.stages.ppo import PPOConfig, load_models

    m = load_models(PPOConfig(), str(tiny_base_dir), str(tiny_base_dir),
                    [RewardSource(kind="rm", path=str(random_rm), role="penalty")])
    assert m.value is not None
    x = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert not m.value.token_values(x, torch.ones_like(x)).any()


def test_the_reference_runs_in_the_policys_dtype(tiny_base_dir, tmp_path):
    """From a bf16 checkpoint the policy trains in fp32; a bf16 reference would make the KL of the untrained
    policy against itself nonzero. Both run in fp32, so it is 0."""
    from tiller.models import load_policy
    from tiller.rl import build_sequences, policy_forward
    from tiller.stages.ppo import PPOConfig, load_models

    model, tok = load_policy(tiny_base_dir, device="cpu")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    tok.save_pretrained(tmp_path / "bf16")
    any_reward = [RewardSource(kind="rm", path=str(tmp_path / "bf16"))]  # a zero head: only loading matters
    m = load_models(PPOConfig(algo="reinforce"), str(tmp_path / "bf16"), str(tmp_path / "bf16"), any_reward)
    assert {p.dtype for p in m.policy.parameters()} == {p.dtype for p in m.ref.parameters()} == {torch.float32}
    b = build_sequences([tok("<|user|>\nHi<|end|>\n<|assistant|>\n")["input_ids"]], [[5, 6, 7]], tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(policy_forward(m.policy, b, 1.0)[0], policy_forward(m.ref, b, 1.0)[0])
