"""``policy_forward`` on a left-padded batch against a plain forward of each sequence alone.

The reference uses nothing of tiller's: one unpadded sequence, ``model(input_ids).logits``, a log-softmax
at the sampling temperature, and the logprob of each response token read off by hand. So padding, the
attention mask, position ids or ``logits_to_keep`` going wrong in the batched path shows up here.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from tiller.rl import build_sequences, policy_forward

VOCAB = 50
PAD = 0
# prompts of lengths 1, 6, 3 and 9, responses of lengths 5, 1, 0 (an empty answer) and 3: every row is padded
PROMPTS = [[7], [3, 14, 15, 9, 26, 5], [35, 8, 9], [42, 11, 2, 17, 18, 28, 44, 1, 31]]
RESPONSES = [[12, 13, 21, 34, 5], [49], [], [6, 6, 40]]


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "gpt2":  # learned absolute positions: wrong position ids change every logit
        cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(cfg)
    else:  # rotary positions, grouped-query attention
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        model = LlamaForCausalLM(cfg)
    return model.eval()


def _by_hand(model: torch.nn.Module, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """Logprob of each response token, from a forward of prompt + response alone (no padding, no mask)."""
    logits = model(torch.tensor([prompt + response])).logits[0].double()  # (T, V)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    # the token at position t is predicted by the logits at t - 1
    return torch.stack([logp[len(prompt) + j - 1, tok] for j, tok in enumerate(response)]) if response \
        else torch.zeros(0, dtype=torch.float64)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_left_padded_logprobs_equal_each_sequence_alone(arch, temperature):
    model = _model(arch)
    b = build_sequences(PROMPTS, RESPONSES, PAD)
    assert b.input_ids.shape == (4, 9 + 5)  # the longest prompt plus the longest response
    with torch.no_grad():
        lp, logits = policy_forward(model, b, temperature)
        expected = [_by_hand(model, p, r, temperature) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    assert lp.shape == (4, 5) and logits.shape == (4, 5, VOCAB)
    for i, (want, resp) in enumerate(zip(expected, RESPONSES, strict=True)):
        n = len(resp)
        assert torch.allclose(lp[i, :n].double(), want, atol=1e-5, rtol=0), (i, lp[i, :n], want)
        assert b.mask[i, :n].eq(1).all() and b.mask[i, n:].eq(0).all()  # padding is masked out of the loss


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_row_does_not_depend_on_its_batch(arch):
    """The same prompt and response give the same logprobs alone and beside a much longer prompt."""
    model = _model(arch)
    with torch.no_grad():
        alone, _ = policy_forward(model, build_sequences(PROMPTS[:1], RESPONSES[:1], PAD), 1.0)
        batched, _ = policy_forward(model, build_sequences(PROMPTS, RESPONSES, PAD), 1.0)
    assert torch.allclose(alone[0], batched[0], atol=1e-5, rtol=0)
