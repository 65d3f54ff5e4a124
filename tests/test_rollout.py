"""The loop sampler against Hugging Face ``generate`` (same tokens for the same seed, under left padding, for
GPT-2 and Llama), and its recorded log-probabilities against a fresh forward (the PPO old logprobs)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tiller.models import load_policy
from tiller.rl import build_sequences, old_logprobs, policy_forward
from tiller.rollout import CompiledStep, generate

# prompts of different lengths, so every batch is left-padded
PROMPTS = ["Hi", "What is 2 + 3 and why is it not 6?", "Tell me about the river town.", "Name a baker."]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model_and_tok(request, tiny_base_dir: Path, tmp_path_factory) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The tiny pretrained GPT-2, or a fresh Llama with its tokenizer (another attention and position code)."""
    if request.param == "gpt2":
        return load_policy(tiny_base_dir, device="cpu")
    from tiller.stages.pretrain import PretrainConfig, build_model

    _, tok = load_policy(tiny_base_dir, device="cpu")
    torch.manual_seed(0)
    model = build_model(PretrainConfig(arch="llama", n_layer=2, n_head=2, n_embd=64, max_positions=256), tok)
    out = tmp_path_factory.mktemp("llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return load_policy(out, device="cpu")


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.9)])
def test_loop_sampler_draws_the_same_tokens_as_hf_generate(model_and_tok, temperature, top_p):
    model, tok = model_and_tok
    kw = dict(n=3, temperature=temperature, top_p=top_p, max_new_tokens=20, seed=5)
    hf = generate(model, tok, PROMPTS, backend="hf", **kw)
    loop = generate(model, tok, PROMPTS, backend="loop", **kw)
    assert loop.response_ids == hf.response_ids
    assert loop.ended == hf.ended and loop.texts == hf.texts and loop.prompt_ids == hf.prompt_ids
    again = generate(model, tok, PROMPTS, backend="loop", **kw)
    assert again.response_ids == loop.response_ids  # seeded: deterministic


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampled_logprobs_equal_a_policy_forward(model_and_tok, temperature, top_p):
    model, tok = model_and_tok
    ro = generate(model, tok, PROMPTS, n=4, temperature=temperature, top_p=top_p, max_new_tokens=24, seed=2,
                  backend="loop")
    assert len(ro.logprobs) == len(ro.response_ids)
    b = build_sequences(ro.prompt_ids, ro.response_ids, tok.pad_token_id)
    with torch.no_grad():
        forward, _ = policy_forward(model, b, temperature)
        sampled = old_logprobs(model, b, ro.logprobs, temperature)
    for i, lp in enumerate(ro.logprobs):
        if lp is not None:
            assert torch.allclose(lp, forward[i, : len(lp)], atol=1e-5, rtol=0)
    assert torch.allclose(sampled * b.mask, forward * b.mask, atol=1e-5, rtol=0)


def test_rows_without_sampled_logprobs_take_a_forward(model_and_tok):
    """A row the sampler could not supply (None) gets the forward's numbers; the others keep theirs."""
    model, tok = model_and_tok
    ro = generate(model, tok, PROMPTS, n=2, max_new_tokens=12, seed=1, backend="loop")
    b = build_sequences(ro.prompt_ids, ro.response_ids, tok.pad_token_id)
    partial = [None if i % 2 else lp for i, lp in enumerate(ro.logprobs)]
    with torch.no_grad():
        forward, _ = policy_forward(model, b, 1.0)
        mixed = old_logprobs(model, b, partial, 1.0)
        none = old_logprobs(model, b, None, 1.0)
    assert torch.allclose(mixed * b.mask, forward * b.mask, atol=1e-5, rtol=0)
    assert torch.equal(none, forward)


def test_greedy_and_hf_sampler_record_no_logprobs(model_and_tok):
    model, tok = model_and_tok
    assert generate(model, tok, PROMPTS, temperature=0.0, max_new_tokens=8, backend="loop").logprobs == []
    assert generate(model, tok, PROMPTS, max_new_tokens=8, seed=0, backend="hf").logprobs == []


@pytest.mark.slow
def test_compiled_decode_step_gives_the_eager_tokens(tiny_base_dir):
    model, tok = load_policy(tiny_base_dir, device="cpu")
    kw = dict(n=2, max_new_tokens=16, seed=3, backend="loop")
    eager = generate(model, tok, PROMPTS, **kw)
    before = CompiledStep.seconds
    compiled = generate(model, tok, PROMPTS, compile=True, **kw)
    assert compiled.response_ids == eager.response_ids
    assert CompiledStep.seconds > before  # the one-time cost is accounted for
    for a, b in zip(compiled.logprobs, eager.logprobs, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-5, rtol=0)


def _sft_loss(model, b) -> torch.Tensor:
    """Mean negative log-likelihood of the response tokens."""
    lp, _ = policy_forward(model, b, 1.0)
    return -(lp * b.mask).sum() / b.mask.sum()


@pytest.mark.parametrize("train_mode", [True, False])
def test_a_model_trains_after_sampling(model_and_tok, train_mode):
    """The loop sampler runs under inference mode and switches the model to eval(); afterwards the model is
    in the mode it was in, the sampler's logprobs can sit in a loss that is differentiated, and a few
    optimiser steps lower an SFT loss on a fixed answer (the weights still train)."""
    model, tok = model_and_tok
    model = copy.deepcopy(model)  # the fixture is shared by the module: train a copy
    model.train(train_mode)
    ro = generate(model, tok, PROMPTS, n=2, max_new_tokens=8, seed=0, backend="loop")
    assert model.training is train_mode
    assert not any(p.is_inference() for p in model.parameters())

    # the PPO ratio against the sampler's logprobs backpropagates into every weight
    b = build_sequences(ro.prompt_ids, ro.response_ids, tok.pad_token_id)
    old = old_logprobs(model, b, ro.logprobs, 1.0)
    lp, _ = policy_forward(model, b, 1.0)
    (torch.exp(lp - old) * b.mask).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)

    # SFT on one fixed answer per prompt: the loss must fall
    target = tok("The baker in the river town sells bread.", add_special_tokens=False)["input_ids"]
    fixed = build_sequences(ro.prompt_ids, [target] * len(ro.prompt_ids), tok.pad_token_id)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.eval()  # no dropout while measuring
    with torch.no_grad():
        before = _sft_loss(model, fixed).item()
    model.train()
    for _ in range(5):
        opt.zero_grad()
        _sft_loss(model, fixed).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = _sft_loss(model, fixed).item()
    assert after < 0.8 * before, (before, after)


def test_prefill_falls_back_to_the_models_own_cache(model_and_tok):
    """A static cache the model refuses (here: too short for the prompt) gives way to its default cache."""
    from tiller.batching import batch, encode_prompt
    from tiller.models import position_ids_from_mask
    from tiller.rollout import call_options, prefill

    model, tok = model_and_tok
    enc = batch([encode_prompt(tok, p) for p in PROMPTS], tok.pad_token_id, side="left")
    pos = position_ids_from_mask(enc["attention_mask"])
    args = (model, enc["input_ids"], enc["attention_mask"], pos)
    with torch.inference_mode():
        fits, _, static = prefill(*args, enc["input_ids"].shape[1] + 4, call_options(model))
        short, cache, fallback_static = prefill(*args, 1, call_options(model))
    assert static and not fallback_static and cache is not None
    assert torch.allclose(fits, short, atol=1e-5, rtol=0)
