"""RL scores what the policy sampled: the reward model reads the sampled token ids (not a re-encoding of
their decoded, stripped text with an end marker appended), an answer cut off by the length limit is scored
as unfinished, and sampling stops at a role header so that no token the policy is trained on is invisible
to the reward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiller.chat import END, ROLE_TOKENS
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
